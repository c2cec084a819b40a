"""All-or-nothing output folders (conversions and exports write through them)."""

import os

import pytest

from hf_llava._atomic import atomic_folder


def test_success_replaces_and_gets_ordinary_permissions(tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "old.txt").write_text("old")
    with atomic_folder(dst) as tmp:
        (tmp / "new.txt").write_text("new")
        assert not (dst / "new.txt").exists()  # nothing visible before the end
    assert sorted(p.name for p in dst.iterdir()) == ["new.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert dst.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no leftovers


def test_failure_leaves_the_old_folder_and_no_leftovers(tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(dst) as tmp:
            (tmp / "half.txt").write_text("half")
            raise KeyboardInterrupt
    assert [p.name for p in dst.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
