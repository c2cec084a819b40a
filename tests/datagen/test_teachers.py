"""The OpenAI-compatible teacher against a real server: retries, timeouts, faults, concurrency, the key."""

import subprocess
import sys

import pytest

from hf_llava.teachers import PLACEHOLDER_API_KEY, OpenAITeacher, Teacher


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
