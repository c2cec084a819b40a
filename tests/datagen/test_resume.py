"""Faults of the run itself: SIGKILL mid-run and resume, a torn journal line, the API key kept secret."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from hf_llava import cli
from hf_llava.datagen.runner import journal_path

SECRET = "sk-hfllava-test-7c1d3a9e5b"


def _journal_samples(out) -> list[dict]:
    lines = journal_path(out).read_text().splitlines()
    return [json.loads(line) for line in lines[1:]]


@pytest.mark.timeout(60)
def test_sigkill_mid_run_then_resume_gives_every_sample_exactly_once(teacher_server, caps_jsonl, tmp_path):
    caps, out = caps_jsonl(12), tmp_path / "data.json"
    teacher_server.delay = 0.15
    env = {**os.environ, "OPENAI_API_KEY": SECRET}
    argv = [sys.executable, "-m", "hf_llava.cli", "datagen", "--input", caps, "--types", "conversation,complex",
            "--base-url", teacher_server.url, "--model", "m", "--output", str(out), "--concurrency", "2"]
    with open(tmp_path / "run1.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if journal_path(out).is_file() and len(journal_path(out).read_bytes().splitlines()) >= 5:
                break
            time.sleep(0.02)
        answered = teacher_server.answered
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "run1.log").read_text()[-2000:]
    assert not out.exists()
    kept = _journal_samples(out)
    assert 4 <= len(kept) < 24
    assert answered - len(kept) <= 2  # lost at most the requests in flight (--concurrency 2)
    with open(journal_path(out), "ab") as f:  # a write cut by the kill: half a record, no newline
        f.write(b'{"key": "img011", "kind": "complex", "val')

    teacher_server.delay, sent = 0.0, len(teacher_server.requests)
    with open(tmp_path / "run2.log", "wb") as log:
        resumed = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=60)
    assert resumed.returncode == 0, (tmp_path / "run2.log").read_text()[-2000:]
    assert len(teacher_server.requests) - sent == 24 - len(kept)  # only what the journal did not have
    ids = [s["id"] for s in json.loads(out.read_text())]
    assert sorted(ids) == sorted(f"img{i:03d}_{t}" for i in range(12) for t in ("conversation", "complex"))
    journal_ids = [r["value"]["id"] for r in _journal_samples(out)]
    assert sorted(journal_ids) == sorted(ids)  # each sample journaled once; the torn line is gone
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert {r["auth"] for r in teacher_server.requests} == {f"Bearer {SECRET}"}  # the key was used, only sent


def test_the_key_is_never_in_output_journal_logs_or_console(teacher_server, caps_jsonl, tmp_path, monkeypatch, capsys,
                                                            caplog):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    teacher_server.script = {"zzrate": ["429"], "zzdead": ["500"] * 5, "zzrefuse": ["refuse"], "zzecho": ["echo401"]}
    out = tmp_path / "data.json"
    caplog.set_level(logging.DEBUG)  # the openai and httpx debug logs too
    argv = ["datagen", "--input", caps_jsonl(4, {0: "zzrate", 1: "zzdead", 2: "zzrefuse", 3: "zzecho"}), "--base-url",
            teacher_server.url, "--model", "m", "--output", str(out), "--max-retries", "1",
            "--types", "conversation"]  # one 401 (zzecho): three in a row would stop the run as a refused key
    assert cli.main(argv) == 0
    assert cli.main([*argv, "--model", "other"]) == cli.EXIT_USAGE  # an error message, too
    captured = capsys.readouterr()
    assert "Retrying request" in caplog.text and "img001, conversation: teacher error" in caplog.text
    assert "img003, conversation: teacher error after 0 retries: AuthenticationError" in caplog.text
    assert "bad key Bearer ***" in caplog.text
    for text in (captured.out, captured.err, caplog.text, out.read_text(), journal_path(out).read_text()):
        assert SECRET not in text
    assert {r["auth"] for r in teacher_server.requests} == {f"Bearer {SECRET}"}


@pytest.mark.timeout(60)
def test_ctrl_c_says_how_to_resume_and_the_log_has_plain_progress_lines(teacher_server, caps_jsonl, tmp_path):
    caps, out = caps_jsonl(12), tmp_path / "data.json"
    teacher_server.delay = 0.1
    argv = [sys.executable, "-m", "hf_llava.cli", "datagen", "--input", caps, "--base-url", teacher_server.url,
            "--model", "m", "--output", str(out), "--concurrency", "2"]
    log = tmp_path / "run.log"
    with open(log, "wb") as stderr:  # a log file: stderr is not a terminal
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(_journal_lines(out)) < 4:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    text = log.read_text()
    assert "\r" not in text and "Traceback" not in text, text[-2000:]
    kept = len(_journal_lines(out)) - 1
    # the journal is the record: a sample it took in the instant of the interrupt may miss its progress line
    shown = re.findall(r"^datagen: (\d+)/36 requests, (\d+) generated, 0 rejected, 0 failed$", text, re.MULTILINE)
    assert shown and shown[-1][0] == shown[-1][1] and int(shown[-1][0]) in (kept - 1, kept), text
    assert text.strip().splitlines()[-1] == (f"hf-llava datagen: interrupted; the samples so far are kept in "
                                             f"{journal_path(out)}: run the same command again to resume.")
    teacher_server.delay, sent = 0.0, len(teacher_server.requests)
    assert cli.main(argv[3:] + ["--no-progress"]) == 0
    assert len(teacher_server.requests) - sent == 36 - kept


def _journal_lines(out) -> list[bytes]:
    path = journal_path(out)
    return path.read_bytes().splitlines() if path.is_file() else []
