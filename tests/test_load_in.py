"""`--load-in 4bit|8bit` (`_cli_args.add_quantization_arguments`) on every command that loads a model: train stage2,
eval, serve, chat; refused with the reason by convert and for quantised folders; a missing bitsandbytes names the
`[quant]` extra."""

import json
import os
import subprocess
import sys

import pytest
import torch

from hf_llava import cli, tiny
from hf_llava._loading import bitsandbytes_config, load_quantized, refuse_quantized

pytest.importorskip("bitsandbytes", reason="the [quant] extra (bitsandbytes) is not installed")

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}


@pytest.fixture()
def saved(tmp_path):
    model, processor = tiny.build_llava(seed=0)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    tiny.demo_image(64, seed=3).save(tmp_path / "photo.png")
    return tmp_path / "model"


@pytest.mark.parametrize("command", [["train", "stage2"], ["eval", "vqa"], ["eval", "multiple-choice"],
                                     ["eval", "llava-bench"], ["serve"], ["chat"]])
def test_the_flags_are_on_every_loading_command_with_their_help(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([*command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--load-in {4bit,8bit}" in out and "--bnb-quant-type {nf4,fp4}" in out and "--bnb-double-quant" in out
    assert "default: nf4" in out and "pip install 'hf-llava[quant]'" in out


def test_eval_vqa_in_4bit_answers_as_the_4bit_model_and_keeps_its_own_journal(saved, tmp_path, capsys):
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"question_id": i, "image": "photo.png", "text": text, "answers": ["red"]})
                                 + "\n" for i, text in enumerate(["Colour?", "Shape?"])))
    args = ["eval", "vqa", "--model", str(saved), "--questions", str(questions), "--max-new-tokens", "3",
            "--no-progress", "--device", "cpu"]
    assert cli.main([*args, "--output", str(tmp_path / "r4.json"), "--load-in", "4bit"]) == 0
    answers = [json.loads(line) for line in (tmp_path / "r4.answers.jsonl").read_text().splitlines()]
    header = answers[0]
    assert "nf4" in json.dumps(header) and "bnb_4bit_use_double_quant" in json.dumps(header)
    report = json.loads((tmp_path / "r4.json").read_text())
    from hf_llava.eval import evaluate_vqa

    model, processor = load_quantized(saved, bitsandbytes_config(4), device="cpu")
    expected = evaluate_vqa(model, processor, [json.loads(line) for line in questions.read_text().splitlines()],
                            tmp_path, max_new_tokens=3, progress=False)
    assert [r["prediction"] for r in report["results"]] == [r["prediction"] for r in expected["results"]]
    # the full-precision model's answers are another run: the 4-bit journal is not reused for it
    capsys.readouterr()
    assert cli.main([*args, "--output", str(tmp_path / "r4.json")]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_chat_in_4bit_answers_as_the_4bit_model(saved, tmp_path):
    done = subprocess.run([sys.executable, "-m", "hf_llava.cli", "chat", str(saved), "--image",
                           str(tmp_path / "photo.png"), "--max-tokens", "6", "--device", "cpu", "--load-in", "4bit"],
                          input="What is shown?\n\n", capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    model, processor = load_quantized(saved, bitsandbytes_config(4), device="cpu")
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}],
        add_generation_prompt=True)
    from PIL import Image

    inputs = processor(images=Image.open(tmp_path / "photo.png"), text=prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    answer = processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert f"ASSISTANT: {answer}\n" in done.stdout


def _quantised_folder(saved, tmp_path):
    from hf_llava import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(saved, quantization_config=bitsandbytes_config(8))
    model.save_pretrained(tmp_path / "int8")
    return tmp_path / "int8"


def test_convert_refuses_a_quantised_folder_and_the_flag(saved, tmp_path, capsys, cli_error):
    folder = _quantised_folder(saved, tmp_path)
    capsys.readouterr()  # transformers 5's loading bar
    with pytest.raises(ValueError, match="export the full-precision folder"):
        refuse_quantized(folder, "hf-llava export-onnx")
    refuse_quantized(saved, "hf-llava export-onnx")  # a full-precision folder passes
    assert cli.main(["convert", "--from", "hf-llava", "--to", "llava-hf", str(folder), str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    cli_error(lines, "convert")
    assert "8-bit bitsandbytes weights" in lines[0] and "full-precision folder" in lines[0]
    assert cli.main(["convert", "--from", "hf-llava", "--to", "llava-hf", str(saved), str(tmp_path / "out"),
                     "--load-in", "4bit"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    cli_error(lines, "convert")
    assert "full-precision weights" in lines[0] and not (tmp_path / "out").exists()


_NO_BNB = "import sys\nsys.modules['bitsandbytes'] = None\nfrom hf_llava.cli import main\nsys.exit(main({}))\n"


_COMMANDS = {  # a command as typed, given the model folder, a data file and an output path
    "train": lambda model, data, out: ["train", "stage2", "--model", model, "--lora", "--data", data, "--output", out],
    "eval": lambda model, data, out: ["eval", "vqa", "--model", model, "--questions", data, "--output", out],
    "serve": lambda model, data, out: ["serve", model, "--port", "0", "--no-ui"],
    "chat": lambda model, data, out: ["chat", model],
}


@pytest.mark.parametrize("command", list(_COMMANDS))
def test_without_bitsandbytes_the_extra_is_named_in_one_line(command, saved, tmp_path, cli_error):
    data = tmp_path / "d.json"
    data.write_text("[]")
    argv = _COMMANDS[command](str(saved), str(data), str(tmp_path / "out")) + ["--load-in", "4bit"]
    done = subprocess.run([sys.executable, "-c", _NO_BNB.format(argv)], capture_output=True, text=True, env=ENV,
                          timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    cli_error(lines, command)
    assert "pip install 'hf-llava[quant]'" in lines[0] and not (tmp_path / "out").exists()
