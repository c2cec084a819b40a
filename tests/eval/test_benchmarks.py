"""Multiple choice and VQA end to end on the tiny model (PyTorch and its ONNX export): the answers are noise,
so the tests check the structure, the counts, and that every number follows from the predictions made."""

import json

import pytest
import torch

from hf_llava import tiny
from hf_llava.cli import main
from hf_llava.eval import evaluate_vqa, load_model
from hf_llava.eval.multiple_choice import LETTERS, choice_index, parse_choice
from hf_llava.eval.vqa import vqa_score

from .conftest import write_jsonl

MC_QUESTIONS = [
    {"question_id": "sq1", "question": "Which shape is red?", "choices": ["square", "disc"], "answer": 0,
     "image": "one.png", "category": "NAT"},
    {"question_id": "sq2", "question": "Which word is a colour?", "choices": ["run", "blue", "cat"], "answer": 1,
     "category": "LAN", "hint": "Colours describe things."},
    {"question_id": "sq3", "question": "What is the background?", "choices": ["blue", "green", "red", "white"],
     "answer": 0, "image": "two.png", "category": "NAT"},
    {"question_id": "sq4", "question": "Which is heavier?", "choices": ["a feather", "a brick"], "answer": 1},
]
VQA_QUESTIONS = [
    {"question_id": 1, "image": "one.png", "text": "What colour is the square?", "answers": ["red"] * 9 + ["pink"],
     "type": "colour"},
    {"question_id": 2, "image": "two.png", "text": "How many discs are there?", "answers": ["1", "one", "2"],
     "type": "count"},
    {"question_id": 3, "image": "one.png", "text": "Is there a disc?", "answers": ["yes"], "type": "yes/no"},
]


def _run(benchmark, model, questions, images, output, *extra) -> dict:
    args = ["eval", benchmark, "--model", str(model), "--questions", str(questions), "--images", str(images),
            "--output", str(output), "--max-new-tokens", "5", "--batch-size", "3", "--no-progress", *extra]
    assert main(args) == 0
    return json.loads(output.read_text())


def test_multiple_choice_end_to_end_scores_the_parsed_predictions(llava_dir, images_dir, tmp_path, capsys):
    questions = write_jsonl(tmp_path / "sqa.jsonl", MC_QUESTIONS)
    report = _run("multiple-choice", llava_dir, questions, images_dir, tmp_path / "mc.json")
    assert report["benchmark"] == "multiple-choice" and report["n"] == 4 and report["image"]["n"] == 2
    assert {name: c["n"] for name, c in report["categories"].items()} == {"LAN": 1, "NAT": 2}
    results = report["results"]
    assert [r["question_id"] for r in results] == ["sq1", "sq2", "sq3", "sq4"]
    correct = []
    for question, result in zip(MC_QUESTIONS, results):
        assert result["parsed"] == parse_choice(result["prediction"])
        assert result["answer"] == LETTERS[question["answer"]]
        correct.append(choice_index(result["parsed"], len(question["choices"])) == question["answer"])
        assert result["correct"] == correct[-1]
    assert report["accuracy"] == pytest.approx(100 * sum(correct) / 4)
    assert report["image"]["accuracy"] == pytest.approx(100 * (correct[0] + correct[2]) / 2)
    assert report["unparsed"] == [r["question_id"] for r in results if r["parsed"] is None]
    answers = (tmp_path / "mc.answers.jsonl").read_text().splitlines()[1:]
    assert [json.loads(a)["value"]["text"] for a in answers] == [r["prediction"] for r in results]
    assert "with image" in capsys.readouterr().out


def test_vqa_in_process_on_a_loaded_model_scores_per_question_type():
    model, processor = tiny.build_llava()
    scene = [tiny.demo_image(64, seed=s) for s in range(3)]  # images in memory, as the demo's scenes
    questions = [{"question": q["text"], "image": scene[i], "answers": q["answers"], "type": q["type"]}
                 for i, q in enumerate(VQA_QUESTIONS)]
    first = evaluate_vqa(model, processor, questions, max_new_tokens=4, progress=False)
    assert first["n"] == 3 and set(first["categories"]) == {"colour", "count", "yes/no"}
    predictions = [r["prediction"] for r in first["results"]]
    assert [r["score"] for r in first["results"]] == [vqa_score(p, q["answers"]) for p, q in
                                                       zip(predictions, questions)]
    assert first["accuracy"] == pytest.approx(100 * sum(r["score"] for r in first["results"]) / 3)

    # Greedy answers do not change: with the predictions as the human answers, every question is right.
    echoed = [{**q, "answers": [p] * 3} for q, p in zip(questions, predictions)]
    again = evaluate_vqa(model, processor, echoed, max_new_tokens=4, progress=False)
    assert [r["prediction"] for r in again["results"]] == predictions and again["accuracy"] == 100.0
    assert all(c["accuracy"] == 100.0 for c in again["categories"].values())


def test_the_onnx_export_gives_the_pytorch_predictions(llava_dir, images_dir, tmp_path):
    pytest.importorskip("onnxruntime", reason="the ONNX path needs the [onnx] extra")
    from hf_llava.onnx import export_onnx

    onnx_dir = export_onnx(llava_dir, tmp_path / "onnx-model", validate=False, show_progress=False)
    questions = write_jsonl(tmp_path / "vqa.jsonl", VQA_QUESTIONS)
    pytorch = _run("vqa", llava_dir, questions, images_dir, tmp_path / "pt.json")
    ort = _run("vqa", onnx_dir, questions, images_dir, tmp_path / "ort.json")
    model, _ = load_model(onnx_dir)
    assert type(model).__name__ == "ORTLlavaForConditionalGeneration"
    assert isinstance(load_model(llava_dir)[0], torch.nn.Module)
    assert [r["prediction"] for r in ort["results"]] == [r["prediction"] for r in pytorch["results"]]
    assert ort["accuracy"] == pytorch["accuracy"] and ort["n"] == 3
    assert {name: c["n"] for name, c in ort["categories"].items()} == {"colour": 1, "count": 1, "yes/no": 1}
