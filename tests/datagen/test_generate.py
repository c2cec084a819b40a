"""`hf-llava datagen` end to end against a real server: the samples, faults and their tally, resume, refusal."""

import json
import logging

import pytest

from hf_llava import cli
from hf_llava.data import LlavaDataCollator, load_llava_dataset
from hf_llava.datagen import load_prompts
from hf_llava.datagen.runner import journal_path


def _datagen(server, caps, out, *extra):
    return cli.main(["datagen", "--input", caps, "--base-url", server.url, "--model", "teacher-m", "--output",
                     str(out), "--no-progress", "--max-retries", "2", *extra])


def _first_question(sample):
    return sample["conversations"][0]["value"]


def test_output_is_llava_json_that_stage2_loads_and_collates(teacher_server, caps_jsonl, tmp_path, tiny_processor,
                                                             images):
    out = tmp_path / "data.json"
    assert _datagen(teacher_server, caps_jsonl(3), out) == 0
    samples = json.loads(out.read_text())
    assert [s["id"] for s in samples] == [f"img{i:03d}_{t}" for i in range(3) for t in ("conversation", "detail",
                                                                                         "complex")]
    by_id = {s["id"]: s for s in samples}
    assert [t["from"] for t in by_id["img001_conversation"]["conversations"]] == ["human", "gpt"] * 2
    assert "A cat number 1 sleeps on a sofa." in by_id["img001_conversation"]["conversations"][1]["value"]
    detail = by_id["img002_detail"]["conversations"]
    assert detail[0]["value"].replace("<image>", "").strip() in load_prompts(["detail"])["detail"].instructions
    for i in range(3):  # what `hf-llava train stage2 --data data.json --image-folder ...` does with it
        (tmp_path / "coco").mkdir(exist_ok=True)
        images[0].save(tmp_path / "coco" / f"img{i:03d}.jpg")
    dataset = load_llava_dataset(out, image_folder=tmp_path)
    batch = LlavaDataCollator(tiny_processor, image_position="keep")([dataset[0], dataset[4]])
    assert batch["pixel_values"].shape[0] == 2 and (batch["labels"] != -100).any()


def test_image_goes_before_or_after_the_first_question_seeded(teacher_server, caps_jsonl, tmp_path):
    caps = caps_jsonl(24)
    runs = {}
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert _datagen(teacher_server, caps, tmp_path / f"{name}.json", "--types", "conversation,detail",
                        "--seed", seed) == 0
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    firsts = [_first_question(s) for s in runs["a"]]
    assert all(q.count("<image>") == 1 and (q.startswith("<image>\n") or q.endswith("\n<image>")) for q in firsts)
    before = sum(q.startswith("<image>\n") for q in firsts)
    assert 0 < before < len(firsts)  # both placements, as in the paper
    assert runs["a"] == runs["b"] and runs["a"] != runs["c"]


def test_faults_are_retried_rejected_or_failed_counted_logged_and_never_written(teacher_server, caps_jsonl, tmp_path,
                                                                               capsys, caplog):
    teacher_server.script = {"zzrate": ["429", "500"], "zzslow": ["slow"], "zzrefuse": ["refuse"],
                             "zzempty": ["empty"], "zzfree": ["freetext"], "zzdead": ["500"] * 3,
                             "zzbroken": ["malformed"], "zzcut": ["truncated"]}
    markers = dict(enumerate(teacher_server.script))
    out = tmp_path / "data.json"
    with caplog.at_level(logging.WARNING):
        assert _datagen(teacher_server, caps_jsonl(10, markers), out, "--types", "complex", "--timeout", "2") == 0
    ids = [s["id"] for s in json.loads(out.read_text())]
    assert ids == ["img000_complex", "img001_complex", "img008_complex", "img009_complex"]
    stdout = capsys.readouterr().out
    row = next(line.split() for line in stdout.splitlines() if line.startswith("complex"))
    header = next(line.split() for line in stdout.splitlines() if line.startswith("type"))
    tally = dict(zip(header[1:], map(int, row[1:])))
    assert tally == {"requested": 10, "generated": 4, "rejected": 4, "failed": 2, "retried": 3 + 2, "resumed": 0}
    for image_id, reason in (("img002", "refusal"), ("img003", "empty reply"), ("img004", "not in the format"),
                             ("img005", "teacher error after 2 retries"), ("img006", "malformed reply"),
                             ("img007", "cut off at the token limit")):
        assert any(image_id in m and "complex" in m and reason in m for m in caplog.messages), (image_id, reason)

    # A rerun asks again for exactly what is missing (the script's faults are spent now) and resumes the rest.
    sent = len(teacher_server.requests)
    assert _datagen(teacher_server, caps_jsonl(10, markers), out, "--types", "complex") == 0
    assert sorted(r["marker"] for r in teacher_server.requests[sent:]) == sorted(
        ["zzrefuse", "zzempty", "zzfree", "zzdead", "zzbroken", "zzcut"])
    assert len(json.loads(out.read_text())) == 10


def test_a_rerun_of_a_finished_run_sends_nothing_and_a_larger_limit_extends_it(teacher_server, caps_jsonl, tmp_path):
    caps, out = caps_jsonl(6), tmp_path / "data.json"
    assert _datagen(teacher_server, caps, out, "--limit", "2") == 0
    assert len(teacher_server.requests) == 6
    assert _datagen(teacher_server, caps, out, "--limit", "2") == 0
    assert len(teacher_server.requests) == 6
    assert _datagen(teacher_server, caps, out) == 0
    assert len(teacher_server.requests) == 18
    samples = json.loads(out.read_text())
    assert len({s["id"] for s in samples}) == len(samples) == 18


@pytest.mark.parametrize("change,needle", [
    (["--model", "other-teacher"], "model"),
    (["--seed", "7"], "seed"),
    (["--types", "detail"], "types"),
])
def test_an_output_of_another_run_is_refused_unless_overwrite(teacher_server, caps_jsonl, tmp_path, capsys, change,
                                                              needle):
    caps, out = caps_jsonl(2), tmp_path / "data.json"
    assert _datagen(teacher_server, caps, out) == 0
    before, journal = out.read_bytes(), journal_path(out).read_bytes()
    capsys.readouterr()
    assert _datagen(teacher_server, caps, out, *change) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and "from another run" in err[0] and needle in err[0] and "--overwrite" in err[0], err
    assert out.read_bytes() == before and journal_path(out).read_bytes() == journal
    sent = len(teacher_server.requests)
    assert _datagen(teacher_server, caps, out, *change, "--overwrite") == 0
    assert len(teacher_server.requests) > sent and journal_path(out).read_bytes() != journal  # started over


def test_an_output_without_a_journal_is_refused_unless_overwrite(teacher_server, caps_jsonl, tmp_path, capsys):
    out = tmp_path / "data.json"
    out.write_text("[]")
    assert _datagen(teacher_server, caps_jsonl(1), out) == cli.EXIT_USAGE
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == "[]"
    assert not journal_path(out).exists() and teacher_server.requests == []
    assert _datagen(teacher_server, caps_jsonl(1), out, "--overwrite") == 0
    assert len(json.loads(out.read_text())) == 3


def test_dry_run_prints_one_rendered_prompt_per_type_and_sends_nothing(teacher_server, caps_jsonl, tmp_path, capsys):
    out = tmp_path / "data.json"
    assert _datagen(teacher_server, caps_jsonl(2), out, "--dry-run") == 0
    printed = capsys.readouterr().out
    assert [line for line in printed.splitlines() if line.startswith("=====")] == [
        "===== conversation: 6 messages =====", "===== detail: 6 messages =====", "===== complex: 6 messages ====="]
    assert printed.count("A cat number 0 sleeps on a sofa.") == 3 and "cat: [0.100, 0.250, 0.500, 0.750]" in printed
    assert teacher_server.requests == [] and not out.exists() and not journal_path(out).exists()


def test_prompts_folder_replaces_the_shipped_prompts_and_bad_examples_are_refused(teacher_server, caps_jsonl, tmp_path,
                                                                                 capsys):
    folder = tmp_path / "my-prompts"
    folder.mkdir()
    mine = {"system": "KIND=complex Ask one hard question.", "examples": [
        {"context": {"captions": ["A bird on a wire."], "instances": []},
         "answer": "Question: Why can the bird sit there?\nAnswer: Its feet are not grounded, so no current flows."}]}
    (folder / "complex.json").write_text(json.dumps(mine))
    out = tmp_path / "data.json"
    assert _datagen(teacher_server, caps_jsonl(1), out, "--types", "complex", "--prompts", str(folder)) == 0
    sent = teacher_server.requests[0]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[0]["content"] == mine["system"] and sent[1]["content"] == "Captions:\nA bird on a wire."

    mine["examples"][0]["answer"] = "The bird sits there because it is safe."
    (folder / "complex.json").write_text(json.dumps(mine))
    capsys.readouterr()
    assert _datagen(teacher_server, caps_jsonl(1), tmp_path / "b.json", "--types", "complex", "--prompts",
                    str(folder)) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "complex.json: example 0" in err and "reply format" in err and not (tmp_path / "b.json").exists()
