"""The training output folder: what a failed run leaves behind, and what it keeps."""

import pytest

from hf_llava.trainers import check_training_output, training_output


def test_a_failed_run_removes_only_what_it_created(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("an earlier run's file")
    check_training_output(out, overwrite=True)
    with pytest.raises(RuntimeError), training_output(out):
        (out / "runs").mkdir()
        (out / "runs" / "events").write_text("log")
        raise RuntimeError("the run failed")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_failed_run_keeps_its_checkpoints(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt), training_output(out):
        (out / "checkpoint-10").mkdir(parents=True)
        raise KeyboardInterrupt
    assert (out / "checkpoint-10").is_dir()


def test_an_empty_folder_is_fine_and_stays(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert check_training_output(out) is None  # a fresh run
    with pytest.raises(ValueError), training_output(out):
        (out / "half-written.json").write_text("{")
        raise ValueError("bad sample")
    assert out.is_dir() and not any(out.iterdir())
