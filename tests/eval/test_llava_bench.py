"""LLaVA-Bench against a real judge server: hand-computed relative scores, 429s, unparseable reviews, resume."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from hf_llava.cli import main
from hf_llava.eval.answering import JournaledAnswers
from hf_llava.eval.inputs import check_questions, read_questions

from .conftest import BENCH

REVIEWS = {
    "[m:alpha]": "8 6\nAssistant 1 names both shapes; Assistant 2 misses the disc.",
    "[m:bravo]": "9, 7.5\nBoth are right; the first is more detailed.",
    "[m:charlie]": "5 5\nEqually vague.",
    "[m:delta]": "7 7\nThe same content.",
    "[m:echo]": "6 3\nAssistant 2 invents objects.",
}
MARKERS = [marker for marker, _, _ in BENCH]


def _args(bench, model, url, output, *extra) -> list:
    return ["eval", "llava-bench", "--model", str(model), "--questions", bench["questions"],
            "--references", bench["references"], "--context", bench["context"], "--images", str(bench["images"]),
            "--base-url", url, "--judge-model", "judge-a", "--output", str(output), "--max-new-tokens", "6",
            "--batch-size", "2", "--no-progress", *extra]


def _answers(report_path) -> list[dict]:
    lines = report_path.with_name(report_path.stem + ".answers.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[1:]]  # after the header naming the run


def test_relative_scores_equal_the_hand_computed_ones_despite_a_429_and_unparseable_reviews(
        judge_server, bench, llava_dir, tmp_path, capsys):
    judge_server.reviews = REVIEWS
    judge_server.script = {
        "[m:charlie]": ["Scores: eight and six."] * 10,  # never parses: asked 1 + 3 times, then failed
        "[m:delta]": ["429"],  # the client retries it
        "[m:echo]": ["I would say 6/10 and 3/10."],  # parses when asked again
    }
    output = tmp_path / "out" / "report.json"
    assert main(_args(bench, llava_dir, judge_server.url, output)) == 0
    report = json.loads(output.read_text())

    # By hand: conv = alpha (8, 6) + delta (7, 7); detail = bravo (9, 7.5); complex = echo (6, 3); charlie failed.
    expected = {"conv": (7.5, 6.5, 2), "detail": (9.0, 7.5, 1), "complex": (6.0, 3.0, 1), "all": (7.5, 5.875, 4)}
    for name, (reference, model, n) in expected.items():
        scores = report["scores"][name]
        assert scores["n"] == n
        assert (scores["reference"], scores["model"]) == (pytest.approx(reference), pytest.approx(model))
        assert scores["relative"] == pytest.approx(100 * model / reference)
    assert report["scores"]["all"]["relative"] == pytest.approx(78.3333, abs=1e-3)
    [failed] = report["failed"]
    assert (failed["question_id"], failed["category"], failed["attempts"]) == (2, "complex", 4)
    assert "Scores: eight and six." in failed["error"]
    asked = Counter(r["marker"] for r in judge_server.requests)
    assert asked == {"[m:alpha]": 1, "[m:bravo]": 1, "[m:charlie]": 4, "[m:delta]": 2, "[m:echo]": 2}
    assert report["judge"]["model"] == "judge-a" and report["judge"]["client_retries"] == 1
    assert report["judge"]["reasked"] == 4 and report["answers"]["generated"] == 5
    assert set(report["timing"]) == {"answers_seconds", "judge_seconds", "total_seconds"}

    printed = capsys.readouterr().out
    assert "78.33" in printed and "86.67" in printed  # all, conv
    assert "left out of the scores: question_id 2" in printed

    # The judge read the context (datagen's rendering), the question, the reference first, the model's answer second.
    answers = {a["key"]: a["value"]["text"] for a in _answers(output)}
    alpha = next(r for r in judge_server.requests if r["marker"] == "[m:alpha]")["messages"][-1]["content"]
    first, second = alpha.split("[Assistant 2]")
    assert "A red square and a green disc." in first and "square: [0.100, 0.250, 0.330, 0.500]" in first
    assert "A reference answer number 0." in first and second.startswith(f"\n{answers['0']}\n")
    delta = next(r for r in judge_server.requests if r["marker"] == "[m:delta]")["messages"][-1]["content"]
    assert "A photo taken in the wild: a blue wall with a red sign." in delta  # the in-the-wild `caption`


def test_a_second_judge_run_reuses_the_answers_instead_of_generating_them(judge_server, bench, llava_dir, tmp_path,
                                                                           capsys):
    judge_server.reviews = REVIEWS
    output = tmp_path / "report.json"
    assert main(_args(bench, llava_dir, judge_server.url, output)) == 0
    answers = _answers(output)
    first = json.loads(output.read_text())

    # Same output without --overwrite: refused before any judge time.
    capsys.readouterr()
    assert main(_args(bench, llava_dir, judge_server.url, output, "--judge-model", "judge-b")) == 2
    assert "--overwrite" in capsys.readouterr().err and len(judge_server.requests) == 5

    assert main(_args(bench, llava_dir, judge_server.url, output, "--judge-model", "judge-b", "--overwrite")) == 0
    second = json.loads(output.read_text())
    assert second["answers"]["generated"] == 0 and second["answers"]["reused"] == 5
    assert _answers(output) == answers
    assert second["judge"]["model"] == "judge-b" and len(judge_server.requests) == 10  # every review asked again
    assert second["scores"] == first["scores"]  # same answers, same scripted judge


def _journaled(path) -> list[str]:
    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")[1:-1]  # after the header, before a torn tail
    return [json.loads(line)["key"] for line in lines if line.strip()]


def test_a_killed_judge_run_resumes_without_asking_finished_reviews_again(judge_server, bench, llava_dir, tmp_path):
    judge_server.reviews = REVIEWS
    judge_server.delay = 0.4  # slow enough to stop the run between reviews
    output = tmp_path / "report.json"
    reviews = tmp_path / "report.reviews.jsonl"
    # The answers exist already (answered in this process), so the run to kill starts judging at once.
    questions = check_questions(read_questions(bench["questions"]))
    JournaledAnswers(llava_dir, questions, output, max_new_tokens=6).generate(images_root=bench["images"],
                                                                              progress=False)
    answered = output.with_name("report.answers.jsonl").read_bytes()
    command = [sys.executable, "-m", "hf_llava.cli", *_args(bench, llava_dir, judge_server.url, output,
                                                             "--concurrency", "1")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": "sk-test"}
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 120
        while len(_journaled(reviews)) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the judge run never journaled two reviews"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    done = {MARKERS[int(key)] for key in _journaled(reviews)}
    assert 2 <= len(done) < 5 and not output.exists()

    asked_before = len(judge_server.requests)
    judge_server.delay = 0.0
    assert main(_args(bench, llava_dir, judge_server.url, output)) == 0
    asked_again = {r["marker"] for r in judge_server.requests[asked_before:]}
    assert asked_again == set(MARKERS) - done
    report = json.loads(output.read_text())
    assert report["scores"]["all"]["n"] == 5 and report["reviews"]["reused"] == len(done)
    assert report["answers"]["generated"] == 0
    assert output.with_name("report.answers.jsonl").read_bytes() == answered  # neither run answered again
