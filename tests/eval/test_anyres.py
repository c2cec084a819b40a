"""`hf-llava eval` on a LLaVA-NeXT (AnyRes) folder: one batch mixes images of three aspect ratios (grids 1x3, 3x1,
2x2: `pixel_values` padded to the batch's largest tile count, `image_sizes` per image) and, for multiple choice, a
question without an image; every answer must be the one `model.generate` gives for that question alone."""

import json

import torch

from hf_llava import LlavaForConditionalGeneration, LlavaProcessor
from hf_llava.cli import main
from hf_llava.eval.multiple_choice import mc_prompt
from hf_llava.eval.vqa import vqa_prompt
from hf_llava.modeling.modeling_llava import anyres_grid

from .conftest import write_jsonl

NEW_TOKENS = 5
IMAGES = ("wide.png", "tall.png", "square.png")  # next_images: grids 1x3, 3x1, 2x2


def _images(folder, next_images) -> dict:
    folder.mkdir()
    for name, image in zip(IMAGES, next_images):
        image.save(folder / name)
    return {name: image for name, image in zip(IMAGES, next_images)}


def _run(benchmark, model, questions, images, output) -> dict:
    args = ["eval", benchmark, "--model", str(model), "--questions", str(questions), "--images", str(images),
            "--output", str(output), "--max-new-tokens", str(NEW_TOKENS), "--batch-size", "4", "--device", "cpu",
            "--no-progress"]
    assert main(args) == 0
    return json.loads(output.read_text())


def _alone(model, processor, text: str, image=None) -> str:
    """The greedy answer of `model.generate` to one question, image first, as LLaVA's evaluation asks it."""
    content = [{"type": "image"}] * (image is not None) + [{"type": "text", "text": text}]
    prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(images=None if image is None else [image], text=prompt, return_tensors="pt")
    assert ("image_sizes" in inputs) == (image is not None)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False,
                                pad_token_id=processor.tokenizer.pad_token_id)
    return processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def _loaded(path):
    return LlavaForConditionalGeneration.from_pretrained(path).eval(), LlavaProcessor.from_pretrained(path)


def test_vqa_on_a_next_folder_answers_as_generate_does_for_each_question(next_dir, next_images, tmp_path):
    images = _images(tmp_path / "images", next_images)
    records = [{"question_id": i, "image": image, "text": text, "answers": ["red"]}
               for i, (image, text) in enumerate([("wide.png", "What is shown?"), ("tall.png", "What is shown?"),
                                                  ("square.png", "What is shown?"), ("wide.png", "Where is it?")])]
    report = _run("vqa", next_dir, write_jsonl(tmp_path / "vqa.jsonl", records), tmp_path / "images",
                  tmp_path / "vqa.json")

    model, processor = _loaded(next_dir)
    sizes = processor.image_processor([images[name] for name in IMAGES])["image_sizes"]
    assert [anyres_grid(tuple(size), model.config) for size in sizes] == [(1, 3), (3, 1), (2, 2)]
    expected = [_alone(model, processor, vqa_prompt(r["text"]), images[r["image"]]) for r in records]
    assert [r["prediction"] for r in report["results"]] == expected
    assert len(set(expected[:3])) == 3  # the same question on each image: an answer for the wrong image shows
    assert report["n"] == 4


def test_multiple_choice_on_a_next_folder_mixes_image_and_text_only_questions(next_dir, next_images, tmp_path):
    images = _images(tmp_path / "images", next_images)
    records = [
        {"question_id": "a", "question": "Which shape is red?", "choices": ["square", "disc"], "answer": 0,
         "image": "tall.png"},
        {"question_id": "b", "question": "Which word is a colour?", "choices": ["run", "blue", "cat"], "answer": 1},
        {"question_id": "c", "question": "What is the background?", "choices": ["blue", "green", "red"], "answer": 0,
         "image": "wide.png"},
        {"question_id": "d", "question": "Which is bigger?", "choices": ["the disc", "the square"], "answer": 1,
         "image": "square.png"},
    ]
    report = _run("multiple-choice", next_dir, write_jsonl(tmp_path / "mc.jsonl", records), tmp_path / "images",
                  tmp_path / "mc.json")

    model, processor = _loaded(next_dir)
    expected = [_alone(model, processor, mc_prompt(r["question"], r["choices"]), images.get(r.get("image")))
                for r in records]
    assert [r["prediction"] for r in report["results"]] == expected
    assert report["n"] == 4 and report["image"]["n"] == 3
