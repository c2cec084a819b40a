"""The shared file plumbing: all-or-nothing output folders and JSON files, journals and their resume rule."""

import json
import os

import pytest

from hf_llava._io import Journal, atomic_folder, listed, open_journal, write_json_atomic


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


def test_a_json_file_is_replaced_whole_and_readable_by_others(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("[1]")
    write_json_atomic(path, [{"id": "a"}])
    assert json.loads(path.read_text()) == [{"id": "a"}]
    assert path.stat().st_mode & 0o044  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["data.json"]


def test_journal_ignores_a_torn_last_line_and_refuses_damage_elsewhere(tmp_path):
    path = tmp_path / "data.json.journal.jsonl"
    journal = Journal(path)
    journal.start({"model": "m"}, fresh=True)
    journal.append("a", "detail", {"id": "a_detail"})
    journal.close()
    with open(path, "ab") as f:
        f.write(b'{"key": "b", "kind": "detail", "value": {"id": "b_detail"}}')  # no newline: torn
    resumed = Journal(path).load()
    assert list(resumed.done) == [("a", "detail")] and resumed.differences({"model": "m"}) == []
    resumed.start({"model": "m"}, fresh=False)
    resumed.append("c", "detail", {"id": "c_detail"})
    resumed.close()
    assert list(Journal(path).load().done) == [("a", "detail"), ("c", "detail")]

    path.write_bytes(path.read_bytes().replace(b'"a_detail"}}', b'"a_det'))
    with pytest.raises(ValueError, match="line 2: not a journal record"):
        Journal(path).load()


def test_the_resume_rule(tmp_path):
    path, output = tmp_path / "r.answers.jsonl", tmp_path / "r.json"
    run = {"model": "m", "max_new_tokens": 4, "inputs": "0123456789abcdef"}
    journal, fresh = open_journal(path, run, overwrite=False, output=output)
    assert fresh and not path.exists()  # nothing is written before start()
    journal.start(run, fresh)
    journal.close()
    # A journal with no result yet protects nothing: another run takes it over without overwrite.
    other = {**run, "max_new_tokens": 8}
    journal, fresh = open_journal(path, other, overwrite=False, output=output)
    assert fresh
    journal.start(other, fresh)
    journal.append("1", "answers", {"text": "red"})
    journal.close()
    # Results of the same run are reused, with overwrite too; another run's are refused unless overwrite.
    for overwrite in (False, True):
        journal, fresh = open_journal(path, other, overwrite=overwrite, output=output)
        assert not fresh and journal.results("answers") == {"1": {"text": "red"}}
    with pytest.raises(FileExistsError, match=r"max_new_tokens 8 then, 4 now; other inputs\); pass overwrite=True"):
        open_journal(path, {**run, "inputs": "fedcba9876543210"}, overwrite=False, output=output)
    journal, fresh = open_journal(path, run, overwrite=True, output=output)
    assert fresh and journal.done == {}
    path.write_text("not json\n")
    with pytest.raises(ValueError, match=r"r.answers.jsonl beside it is not a readable journal \(line 1"):
        open_journal(path, run, overwrite=False, output=output)


def test_a_journal_written_by_hf_llava_0_1_resumes(tmp_path):
    path = tmp_path / "data.json.journal.jsonl"  # 0.1.0 named the fields image_id / type / sample
    path.write_text('{"hf_llava_journal": 1, "run": {"seed": 0}}\n'
                    '{"image_id": "img1", "type": "detail", "sample": {"id": "img1_detail"}}\n')
    journal, fresh = open_journal(path, {"seed": 0}, overwrite=False, output=tmp_path / "data.json")
    assert not fresh and journal.done == {("img1", "detail"): {"id": "img1_detail"}}


def test_listed_counts_what_it_leaves_out():
    assert listed(range(3)) == "0, 1, 2"
    assert listed(range(8)) == "0, 1, 2, 3, 4 (+3 more)"
    assert listed(["a", "b", "c"], 2, sep="\n  ") == "a\n  b (+1 more)"
