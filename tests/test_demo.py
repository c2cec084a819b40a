"""`hf-llava demo --quick`, the README's main job end to end: a LLaVA that learns to see, offline, on CPU."""

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

from hf_llava import cli
from hf_llava.demo import ABLATIONS, DEFAULT_OUTPUT, default_output
from hf_llava.world.questions import QUESTION_TYPES


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("demo") / "run"
    assert cli.main(["demo", "--quick", "--output", str(output), "--device", "cpu"]) == 0
    return output, json.loads((output / "report.json").read_text())


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the fixture trains: ~3 minutes on 2 idle cores, more on a busy machine
def test_the_quick_demo_writes_data_checkpoints_onnx_and_the_loss_chart(quick_run):
    output, _ = quick_run
    for path in ("world/train/scenes.jsonl", "world/test/questions.jsonl", "data/instruct.json", "data/captions.json",
                 "stage1/config.json", "stage1/mm_projector.safetensors", "stage2/config.json",
                 "ablation/stage2_only/config.json", "onnx/onnx/decoder_model_merged.onnx", "loss.png"):
        assert (output / path).is_file(), path
    samples = json.loads((output / "data" / "instruct.json").read_text())
    assert {s["id"].rsplit("_", 1)[1] for s in samples} == {"conversation", "detail", "complex"}
    chart = Image.open(output / "loss.png")
    assert chart.format == "PNG" and len(chart.getcolors(1 << 16)) > 3  # curves drawn in colour, not a blank page
    assert not list(output.parent.glob(f".{output.name}.*"))  # the working folder was moved into place


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the fixture trains: ~3 minutes on 2 idle cores, more on a busy machine
def test_the_report_shows_a_model_that_learned_to_see(quick_run):
    _, report = quick_run
    assert set(report["ablation"]) == set(ABLATIONS)
    for scores in report["ablation"].values():
        assert set(scores["per_type"]) <= set(QUESTION_TYPES)  # held-out scenes show 2-4 shapes: no count "1"
        low, high = scores["interval"]
        assert low <= scores["accuracy"] <= high and scores["unseen_phrasing"]["n"] == scores["n"]
    assert report["splits"]["test"]["scenes"] == 40 and "1" not in report["splits"]["test"]["by_shapes"]
    chance = report["chance"]
    assert chance < 35
    full = report["ablation"]["stage1_stage2"]["accuracy"]
    # --quick trains for about two minutes: it must learn far more than a guesser (measured on the test scenes
    # held out by content: 82.0% vs 28.3% chance on 2 CPU cores); the full run goes further (see the README).
    assert full >= chance + 40, report["ablation"]
    # stage 2 (instructions, the LM tuned too) adds to what stage 1 alone aligned (measured: 69.0%)
    assert report["ablation"]["stage1_only"]["accuracy"] < full - 10, report["ablation"]
    assert report["onnx"]["matches_pytorch"] is True
    assert {"question", "answer", "image"} <= set(report["onnx"])
    assert {"world", "datagen", "stage1", "stage2", "stage2_only", "eval", "onnx", "total"} <= set(report["seconds"])


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the fixture trains: ~3 minutes on 2 idle cores, more on a busy machine
def test_the_final_checkpoint_answers_through_the_auto_class_and_the_pipeline(quick_run):
    output, report = quick_run
    example = report["onnx"]
    model = AutoModelForImageTextToText.from_pretrained(output / "stage2").eval()
    processor = AutoProcessor.from_pretrained(output / "stage2")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": example["question"]}]}]
    inputs = processor(images=Image.open(example["image"]), text=processor.apply_chat_template(
        messages, add_generation_prompt=True), return_tensors="pt")
    with torch.inference_mode():
        tokens = model.generate(**inputs, max_new_tokens=16, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    assert tokens.tolist() == example["tokens"]  # what ONNX Runtime generated
    pipe = pipeline("image-text-to-text", model=str(output / "stage2"))
    messages[0]["content"][0]["image"] = Image.open(example["image"])
    out = pipe(text=messages, max_new_tokens=16, do_sample=False, return_full_text=False)
    assert out[0]["generated_text"].strip() == example["answer"]


def test_a_non_empty_output_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("keep me")
    assert cli.main(["demo", "--quick", "--output", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and "taken" in err[0] and "--overwrite" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is missing")
def test_cuda_without_a_cuda_device_names_the_cpu_flag(tmp_path, capsys):
    assert cli.main(["demo", "--device", "cuda", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and "--device cpu" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("missing", ["trl", "onnxruntime"])
def test_without_its_extras_the_demo_names_the_install_command(tmp_path, missing):
    # an install without the extra: importing the package fails, as on a bare `pip install hf-llava`
    code = (f"import sys\nsys.modules[{missing!r}] = None\nfrom hf_llava.cli import main\n"
            f"sys.exit(main(['demo', '--quick', '--output', {str(tmp_path / 'out')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(err) <= 2 and err[0].startswith("hf-llava demo: error: "), err
    extra = "train" if missing == "trl" else "onnx"
    assert f"pip install 'hf-llava[{extra}]'" in err[0]
    assert not (tmp_path / "out").exists()


def test_the_help_says_what_the_demo_runs():
    done = subprocess.run([sys.executable, "-m", "hf_llava.cli", "demo", "--help"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "300"})
    description = done.stdout.split("\n\n")[1]  # usage, then the description
    assert done.returncode == 0 and "stage 1" in description and "ONNX" in description, done.stdout


def test_the_default_output_is_a_fresh_folder(tmp_path):
    assert default_output(tmp_path) == tmp_path / DEFAULT_OUTPUT
    (tmp_path / DEFAULT_OUTPUT).mkdir()  # empty: still usable
    assert default_output(tmp_path) == tmp_path / DEFAULT_OUTPUT
    (tmp_path / DEFAULT_OUTPUT / "report.json").write_text("{}")
    assert default_output(tmp_path) == tmp_path / f"{DEFAULT_OUTPUT}-2"


def test_cli_without_a_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "export-onnx" in capsys.readouterr().out


def test_the_table_prints_each_accuracy_with_its_interval_beside_the_blind_baselines():
    from hf_llava.demo import baseline_lines, results_table
    from hf_llava.eval.report import percent_with_interval

    questions = [{"type": t, "answer": a} for t, a in [("colour", "red"), ("colour", "blue"), ("count", "2"),
                                                         ("count", "2"), ("shape", "circle"), ("position", "top left"),
                                                         ("yes/no", "no")]]
    baselines = baseline_lines(questions, {"colour": "red", "count": "3", "shape": "circle", "position": "top left",
                                           "yes/no": "yes"})
    assert baselines["majority"]["accuracy"] == pytest.approx(100 * 3 / 7, abs=0.01)  # training answers, not test's
    assert baselines["majority"]["per_type"]["count"]["accuracy"] == 0
    score = {**percent_with_interval(80.0, 10), "per_type": {t: percent_with_interval(50.0, 2) for t in QUESTION_TYPES},
             "unseen_phrasing": percent_with_interval(60.0, 10)}
    table = results_table({k: score for k in ABLATIONS}, baselines)
    overall, unseen = table.splitlines()[-2:]
    assert overall.split()[0] == "overall" and overall.count("80.0 [49.0, 94.3]") == 3, table
    assert unseen.startswith("unseen phrasing") and unseen.count("60.0 [31.3, 83.2]") == 3, table
    assert "majority answer" in table.splitlines()[0] and "chance" in table.splitlines()[0]
