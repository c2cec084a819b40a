"""`hf-llava eval`: bad inputs are two-line errors naming the file, the id and the flag, before any model or
judge time, with nothing written; `--help` imports neither torch, transformers nor openai."""

import json
import subprocess
import sys
import time

import pytest
import torch

from hf_llava.cli import main
from hf_llava.eval.answering import JournaledAnswers
from hf_llava.eval.inputs import read_questions
from hf_llava.eval.vqa import check_vqa_questions

from ..datagen.conftest import without_openai
from .conftest import BENCH, write_jsonl


def _bench_args(bench, model, url, output) -> list:
    return ["eval", "llava-bench", "--model", str(model), "--questions", bench["questions"],
            "--references", bench["references"], "--context", bench["context"], "--images", str(bench["images"]),
            "--base-url", url, "--judge-model", "judge", "--output", str(output), "--no-progress"]


def _rewrite(path: str, records: list) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def _break(case: str, bench: dict, args: list) -> tuple[list, list]:
    """Spoil one input; returns the arguments and the words the error must contain."""
    questions = [dict(q) for q in bench["records"]]
    if case == "missing image":
        (bench["images"] / "two.png").unlink()
        return args, ["--images", "2 image file(s) missing", "two.png (question_id 2)", "two.png (question_id 3)"]
    if case == "no reference":
        references = [json.loads(line) for line in open(bench["references"])]
        _rewrite(bench["references"], [r for r in references if r["question_id"] != 2])
        return args, ["--references", "question_id 2"]
    if case == "unknown category":
        questions[1]["category"] = "reasoning"
        _rewrite(bench["questions"], questions)
        return args, ["--questions", "line 2", "question_id 1", "'reasoning'", "conv, detail, complex"]
    if case == "no context":
        contexts = [json.loads(line) for line in open(bench["context"])]
        _rewrite(bench["context"], contexts[:1])
        return args, ["--context", "two.png", "question_id 2"]
    if case == "no model":
        args[args.index("--model") + 1] = "/nonexistent/model"
        return args, ["--model /nonexistent/model"]
    if case == "bad box":
        contexts = [json.loads(line) for line in open(bench["context"])]
        contexts[0]["instances"][0]["bbox"] = [10, 25, 33, 50]  # pixels, not normalised
        _rewrite(bench["context"], contexts)
        return args, ["--context", "line 1", "outside [0, 1]"]
    assert case == "zero batch"
    return args + ["--batch-size", "0"], ["--batch-size 0"]


@pytest.mark.parametrize("case", ["missing image", "no reference", "unknown category", "no context", "no model",
                                  "bad box", "zero batch"])
def test_llava_bench_bad_inputs_fail_in_two_lines_before_model_or_judge_time(case, bench, llava_dir, judge_server,
                                                                             tmp_path, capsys, cli_error):
    output = tmp_path / "out" / "report.json"
    args, words = _break(case, bench, _bench_args(bench, llava_dir, judge_server.url, output))
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    cli_error(err, "eval")
    for word in words:
        assert word in " ".join(err), (word, err)
    assert not output.parent.exists() and judge_server.requests == []


def test_an_existing_report_is_refused_without_overwrite(bench, llava_dir, judge_server, tmp_path, capsys):
    output = tmp_path / "report.json"
    output.write_text("{}")
    assert main(_bench_args(bench, llava_dir, judge_server.url, output)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and str(output) in err[0] and "--overwrite" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["context.jsonl", "images", "questions.jsonl",
                                                          "references.jsonl", "report.json"]
    assert output.read_text() == "{}" and judge_server.requests == []


@pytest.mark.parametrize("benchmark, record, words", [
    ("vqa", {"question_id": 7, "image": "one.png", "text": "Colour?"}, ["--questions", "line 1", "question_id 7",
                                                                      "'answers'"]),
    ("vqa", {"question_id": 7, "image": "gone.png", "text": "Colour?", "answers": ["red"]},
     ["--images", "gone.png", "question_id 7"]),
    ("multiple-choice", {"question_id": "s1", "question": "Which?", "choices": ["a", "b"], "answer": 2},
     ["--questions", "line 1", "question_id s1", "'answer'", "0 to 1"]),
    ("multiple-choice", {"question_id": "s1", "question": "Which?", "choices": ["a"], "answer": 0},
     ["--questions", "question_id s1", "'choices'"]),
])
def test_vqa_and_multiple_choice_bad_inputs_fail_in_two_lines(benchmark, record, words, llava_dir, tmp_path, capsys):
    (tmp_path / "one.png").write_bytes(b"")  # exists; never opened before the questions are checked
    questions = write_jsonl(tmp_path / "q.jsonl", [record])
    output = tmp_path / "out" / "report.json"
    args = ["eval", benchmark, "--model", str(llava_dir), "--questions", questions, "--output", str(output)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and all(word in " ".join(err) for word in words), err
    assert not output.parent.exists()


def test_answers_of_another_run_are_refused_without_overwrite(llava_dir, tmp_path, capsys):
    from hf_llava import tiny

    tiny.demo_image(40).save(tmp_path / "one.png")
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question_id": 1, "image": "one.png", "text": "Colour?",
                                                    "answers": ["red"]}])
    output = tmp_path / "report.json"
    checked = check_vqa_questions(read_questions(questions))
    JournaledAnswers(llava_dir, [{**q, "text": q["prompt"]} for q in checked], output, max_new_tokens=3).generate(
        images_root=tmp_path, progress=False)
    journal = (tmp_path / "report.answers.jsonl").read_bytes()
    capsys.readouterr()  # the model's loading output (transformers 5 shows a bar)
    args = ["eval", "vqa", "--model", str(llava_dir), "--questions", questions, "--output", str(output),
            "--max-new-tokens", "4", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and "report.answers.jsonl" in err[0] and "max_new_tokens 3 then, 4 now" in err[0]
    assert "--overwrite" in err[0] and not output.exists()
    assert (tmp_path / "report.answers.jsonl").read_bytes() == journal
    assert main(args + ["--overwrite"]) == 0  # starts the answers over
    assert json.loads(output.read_text())["answers"]["generated"] == 1


def test_eval_help_imports_neither_torch_transformers_nor_openai():
    code = ("import sys\nfrom hf_llava.cli import main\nfor argv in (['eval', '--help'], ['eval', 'llava-bench', "
            "'--help'], ['eval', 'vqa', '--help']):\n    try:\n        main(argv)\n    except SystemExit:\n"
            "        pass\nprint([m for m in ('torch', 'transformers', 'openai') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--judge-model NAME" in result.stdout, result.stderr[-2000:]
    assert "multiple-choice" in result.stdout and "--references FILE" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_llava_bench_without_the_teacher_extra_says_how_to_install_it(bench, llava_dir, tmp_path):
    output = tmp_path / "report.json"
    result = without_openai(*_bench_args(bench, llava_dir, "http://127.0.0.1:9/v1", output))
    assert result.returncode == 2, result.stderr[-2000:]
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hf-llava eval: error: ") and "Traceback" not in result.stderr
    assert "pip install 'hf-llava[teacher]'" in err[0] and not output.exists()


def test_an_unreachable_judge_is_named_before_the_model_answers_and_a_rerun_needs_no_overwrite(
        closed_url, judge_server, bench, llava_dir, tmp_path, capsys, cli_error):
    output = tmp_path / "report.json"
    start = time.monotonic()
    assert main(_bench_args(bench, llava_dir, closed_url, output)) == 2
    assert time.monotonic() - start < 20  # one probe, no retries, no model time
    err = capsys.readouterr().err.strip().splitlines()
    cli_error(err, "eval")
    assert f"cannot reach the server at --base-url {closed_url}" in err[0] and "is running" in err[0], err
    assert not output.exists() and not (tmp_path / "report.answers.jsonl").exists()

    judge_server.reviews = {marker: "8 6\nFine." for marker, _, _ in BENCH}
    assert main(_bench_args(bench, llava_dir, judge_server.url, output) + ["--max-new-tokens", "4"]) == 0
    assert json.loads(output.read_text())["scores"]["all"]["n"] == len(BENCH)


def test_a_judge_whose_every_review_fails_is_a_failed_run(judge_server, bench, llava_dir, tmp_path, capsys):
    judge_server.reviews = {marker: "Both answers are fine." for marker, _, _ in BENCH}  # never two scores
    output = tmp_path / "report.json"
    assert main(_bench_args(bench, llava_dir, judge_server.url, output) + ["--review-retries", "0",
                                                                          "--max-new-tokens", "4"]) == 1
    captured = capsys.readouterr()
    assert "5 review(s) failed" in captured.out and "No review could be scored" in captured.err
    assert json.loads(output.read_text())["scores"]["all"]["n"] == 0


def _vqa_args(tmp_path, model, records, *extra) -> list:
    from hf_llava import tiny

    tiny.demo_image(40).save(tmp_path / "one.png")
    questions = write_jsonl(tmp_path / "q.jsonl", records)
    return ["eval", "vqa", "--model", str(model), "--questions", questions, "--output", str(tmp_path / "r.json"),
            "--max-new-tokens", "2", "--no-progress", *extra]


def test_a_vqa_question_without_an_image_is_an_error_not_a_text_only_question(llava_dir, tmp_path, capsys, cli_error):
    records = [{"question_id": 1, "image": "one.png", "text": "Colour?", "answers": ["red"]},
               {"question_id": 2, "text": "Colour?", "answers": ["red"]}]
    assert main(_vqa_args(tmp_path, llava_dir, records)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    cli_error(err, "eval")
    assert "line 2 (question_id 2): no 'image'" in err[0] and "--images" in err[0], err
    assert not (tmp_path / "r.json").exists()


def test_merge_adapter_on_a_folder_that_is_not_an_adapter_is_an_error(llava_dir, tmp_path, capsys, cli_error):
    records = [{"question_id": 1, "image": "one.png", "text": "Colour?", "answers": ["red"]}]
    assert main(_vqa_args(tmp_path, llava_dir, records, "--merge-adapter")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    cli_error(err, "eval")
    assert f"--model {llava_dir} is not a LoRA adapter folder (it has no adapter_config.json)" in err[0], err
    assert "drop --merge-adapter" in err[0] and not (tmp_path / "r.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_device_cuda_without_cuda_is_a_one_line_error(llava_dir, tmp_path, capsys, cli_error):
    records = [{"question_id": 1, "image": "one.png", "text": "Colour?", "answers": ["red"]}]
    assert main(_vqa_args(tmp_path, llava_dir, records, "--device", "cuda")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    cli_error(err, "eval")
    assert err[0].startswith("hf-llava eval: error: --device cuda, but CUDA is not available here"), err
    assert "--device cpu" in err[0] and not (tmp_path / "r.answers.jsonl").exists()
