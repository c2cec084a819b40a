"""The local teacher: a tiny random chat LM saved to a folder generates in batches; its noise is rejected."""

import json
import logging
import shutil

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_llava import cli, tiny
from hf_llava.datagen.runner import journal_path
from hf_llava.teachers import LocalTeacher

CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ '\\n' }}{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.fixture(scope="module")
def tiny_chat_lm(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-chat-lm")
    tokenizer = tiny.build_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=8192,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_local_teacher_replies_in_batches(tiny_chat_lm):
    teacher = LocalTeacher(str(tiny_chat_lm), batch_size=2, max_tokens=4, temperature=0)
    requests = [[{"role": "user", "content": f"Describe picture {i}."}] for i in range(3)]
    streamed = list(teacher.complete_iter(requests))
    assert [i for i, _ in streamed] == [0, 1, 2]
    assert all(r.ok and isinstance(r.text, str) and r.retries == 0 for _, r in streamed)
    assert teacher.complete(requests) == [r for _, r in streamed]  # greedy: the same replies again


def test_noise_replies_are_generated_counted_rejected_and_nothing_is_written(tiny_chat_lm, caps_jsonl, tmp_path,
                                                                            capsys, caplog):
    out = tmp_path / "complex.json"
    argv = ["datagen", "--input", caps_jsonl(3), "--types", "complex", "--local-model", str(tiny_chat_lm),
            "--output", str(out), "--batch-size", "2", "--max-tokens", "6", "--no-progress"]
    with caplog.at_level(logging.WARNING):
        assert cli.main(argv) == 1
    captured = capsys.readouterr()
    row = next(line.split() for line in captured.out.splitlines() if line.startswith("complex"))
    assert row[1:5] == ["3", "0", "3", "0"]  # requested, generated, rejected, failed
    assert "nothing written" in captured.err
    rejected = [m for m in caplog.messages if "complex: reply rejected: not in the format" in m]
    assert sorted(m.split(",")[0] for m in rejected) == ["image img000", "image img001", "image img002"]
    assert not out.exists()
    assert len(journal_path(out).read_text().splitlines()) == 1  # the run's header, no sample
    assert cli.main([*argv, "--seed", "3"]) == 1  # a run with nothing done is not protected: no --overwrite needed


@pytest.mark.parametrize("make,needle", [
    (lambda tmp: tmp / "missing", "no such folder"),
    (lambda tmp: tmp, "no config.json"),
])
def test_a_folder_that_is_not_a_chat_lm_is_refused_before_anything_runs(tmp_path, make, needle):
    with pytest.raises((FileNotFoundError, ValueError), match=needle):
        LocalTeacher(make(tmp_path))


def test_a_model_without_a_chat_template_is_refused(tmp_path, tiny_chat_lm):
    (tmp_path / "config.json").write_text((tiny_chat_lm / "config.json").read_text())
    config = json.loads((tiny_chat_lm / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no chat template"):
        LocalTeacher(tmp_path)


def test_another_local_model_into_the_same_output_is_refused(tiny_chat_lm, caps_jsonl, tmp_path, capsys):
    other = tmp_path / "other-chat-lm"
    shutil.copytree(tiny_chat_lm, other)
    out = tmp_path / "detail.json"
    # Sampled noise, long enough that some replies pass the detail parser (15 words or more).
    argv = ["datagen", "--input", caps_jsonl(8), "--types", "detail", "--output", str(out), "--batch-size", "8",
            "--max-tokens", "200", "--temperature", "1", "--no-progress"]
    assert cli.main([*argv, "--local-model", str(tiny_chat_lm)]) == 0
    samples = out.read_bytes()
    header = json.loads(journal_path(out).read_text().splitlines()[0])
    assert header["run"]["model"] == tiny_chat_lm.name  # the folder's name, as the label
    capsys.readouterr()
    assert cli.main([*argv, "--local-model", str(other)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and "from another run" in err[0], err
    assert f"model {tiny_chat_lm.name} then, other-chat-lm now" in err[0] and "--overwrite" in err[0]
    assert out.read_bytes() == samples
