"""The OpenAI-compatible teacher against a real server: retries, timeouts, faults, concurrency, the key."""

import json
import logging
import subprocess
import sys
import time

import pytest

from hf_llava import cli
from hf_llava.datagen.runner import journal_path
from hf_llava.teachers import PLACEHOLDER_API_KEY, OpenAITeacher, Teacher

from .conftest import without_openai


def _ask(caption: str) -> list[dict]:
    system = "KIND=detail"  # the test server answers in the detail format
    return [{"role": "system", "content": system}, {"role": "user", "content": f"Captions:\n{caption}"}]


def test_retries_on_429_500_and_timeouts_are_counted_per_request(teacher_server):
    teacher_server.script = {"rate": ["429", "429"], "boom": ["500"], "slow": ["slow"]}
    teacher = OpenAITeacher(teacher_server.url, "m", timeout=2, max_retries=3, concurrency=4)
    assert isinstance(teacher, Teacher)
    replies = teacher.complete([_ask(f"A {word} cat.") for word in ("rate", "boom", "slow", "calm")])
    assert [r.ok for r in replies] == [True] * 4, [r.error for r in replies]
    assert [r.retries for r in replies] == [2, 1, 1, 0]
    assert replies[0].text.startswith("A rate cat.")  # in request order, whatever order they finished in


def test_a_request_that_keeps_failing_is_an_error_reply_and_the_others_go_on(teacher_server):
    teacher_server.script = {"always": ["500"] * 10, "broken": ["malformed"]}
    teacher = OpenAITeacher(teacher_server.url, "m", timeout=5, max_retries=2)
    failing, broken, fine = teacher.complete([_ask("always"), _ask("broken"), _ask("fine")])
    assert not failing.ok and "500" in failing.error and failing.retries == 2
    assert not broken.ok and broken.error.startswith("malformed reply")
    assert fine.ok and fine.text.startswith("fine")
    assert sum(r["marker"] == "always" for r in teacher_server.requests) == 3  # the first try + 2 retries


def test_concurrency_is_bounded_and_used(teacher_server):
    teacher_server.delay = 0.1
    teacher = OpenAITeacher(teacher_server.url, "m", concurrency=3)
    replies = teacher.complete(_ask(f"cat {i}") for i in range(12))  # a lazy iterable is fine
    assert all(r.ok for r in replies) and len(replies) == 12
    assert teacher_server.max_in_flight == 3


def test_the_key_comes_from_the_environment_or_a_placeholder(teacher_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-5e1f")
    teacher = OpenAITeacher(teacher_server.url, "m")
    teacher.complete([_ask("cat")])
    assert "sk-test" not in repr(teacher)
    monkeypatch.delenv("OPENAI_API_KEY")
    OpenAITeacher(teacher_server.url, "m").complete([_ask("cat")])
    assert [r["auth"] for r in teacher_server.requests] == ["Bearer sk-test-5e1f", f"Bearer {PLACEHOLDER_API_KEY}"]


@pytest.mark.parametrize("kwargs,needle", [
    ({"base_url": "localhost:8000/v1"}, "base_url='localhost:8000/v1'"),
    ({"concurrency": 0}, "concurrency=0"),
    ({"model": ""}, "model=''"),
])
def test_bad_settings_are_refused_naming_the_parameter(kwargs, needle):
    settings = {"base_url": "http://127.0.0.1:9/v1", "model": "m", **kwargs}
    with pytest.raises(ValueError, match=needle):
        OpenAITeacher(**settings)


def test_datagen_help_imports_neither_the_client_nor_torch():
    code = ("import sys\nfrom hf_llava.cli import main\ntry:\n    main(['datagen', '--help'])\nexcept SystemExit:\n"
            "    pass\nprint([m for m in ('openai', 'torch', 'transformers', 'tqdm') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--local-model DIR" in result.stdout, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_datagen_without_the_teacher_extra_says_how_to_install_it(caps_jsonl, tmp_path):
    result = without_openai("datagen", "--input", caps_jsonl(1), "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                            "--output", str(tmp_path / "data.json"))
    assert result.returncode == 2, result.stderr[-2000:]
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hf-llava datagen: error: ") and "Traceback" not in result.stderr
    assert "pip install 'hf-llava[teacher]'" in err[0]
    assert not (tmp_path / "data.json").exists()


def test_a_server_that_is_down_stops_the_run_in_one_message_and_a_rerun_resumes(closed_url, teacher_server, caps_jsonl,
                                                                               tmp_path, capsys, caplog):
    caps, out = caps_jsonl(8), tmp_path / "data.json"
    argv = ["datagen", "--input", caps, "--output", str(out), "--model", "m", "--no-progress"]
    start = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert cli.main([*argv, "--base-url", closed_url]) == cli.EXIT_USAGE  # the client's default retries
    assert time.monotonic() - start < 40  # one round of retries (about 8 s), not one per request
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("hf-llava datagen: error: cannot reach the server at --base-url "
                                               f"{closed_url}"), err
    assert "check that the server is running" in err[0] and "run the same command again to resume" in err[1]
    assert not [m for m in caplog.messages if "teacher error" in m]  # no line per request
    assert not out.exists()

    # The same command, once the server answers (here: another address), runs without --overwrite.
    assert cli.main([*argv, "--base-url", teacher_server.url]) == 0
    assert len(json.loads(out.read_text())) == 24


def test_a_server_that_dies_mid_run_keeps_what_was_done(teacher_server, caps_jsonl, tmp_path, capsys):
    caps, out = caps_jsonl(12), tmp_path / "data.json"
    argv = ["datagen", "--input", caps, "--types", "detail", "--base-url", teacher_server.url, "--model", "m",
            "--output", str(out), "--no-progress", "--max-retries", "0", "--concurrency", "2"]
    stop_after = 5

    handler = teacher_server.RequestHandlerClass

    def do_post(self):  # after `stop_after` replies the server goes away: its socket closes
        if teacher_server.answered >= stop_after:
            self.close_connection = True
            self.connection.close()
            return
        handler.do_POST(self)

    teacher_server.RequestHandlerClass = type("DyingHandler", (handler,), {"do_POST": do_post})
    assert cli.main(argv) == cli.EXIT_USAGE
    assert "failed to connect" in capsys.readouterr().err
    kept = {json.loads(line)["key"] for line in journal_path(out).read_text().splitlines()[1:]}
    assert len(kept) >= stop_after - 2
    teacher_server.RequestHandlerClass = handler
    sent = len(teacher_server.requests)
    assert cli.main(argv) == 0
    asked_again = {r["messages"][-1]["content"].split("number ")[1].split()[0] for r in teacher_server.requests[sent:]}
    assert not asked_again & {key[len("img"):].lstrip("0") or "0" for key in kept}  # what was kept is not asked again
    assert sorted(s["id"] for s in json.loads(out.read_text())) == [f"img{i:03d}_detail" for i in range(12)]
