"""The shipped chat model: the demo's stage 1 + stage 2 LLaVA, loaded with the Auto classes, answering questions
about held-out world pictures; `training.json` says how it was made and what it scores."""

import re
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from transformers import AutoModelForImageTextToText, AutoProcessor

import hf_llava
from hf_llava.demo import DATAGEN_TYPES, FULL, SEED
from hf_llava.eval.vqa import normalize_answer
from hf_llava.world.parts import TRAINING_FILE, chat_model_path, chat_model_training, example_images
from hf_llava.world.questions import ANSWERS, QUESTION_TYPES
from hf_llava.world.scenes import IMAGE_SIZE, make_scenes
from hf_llava.world.splits import content, pretraining_contents, prompt_example_contents

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))  # the chat turn the producing script checks the examples with
from train_chat_model import chat_reply  # noqa: E402


@pytest.fixture(scope="module")
def chat():
    path = chat_model_path()
    return AutoModelForImageTextToText.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)


@pytest.fixture(scope="module")
def examples():
    return example_images(3)


def says(text: str, answer: str, kind: str) -> bool:
    """The reply names the right answer and no other answer its question type can have ("The circle is red." says
    red; "a red circle and a blue square" says neither colour alone)."""
    words = f" {normalize_answer(text)} "
    named = {a for a in ANSWERS[kind] if re.search(rf"\b{re.escape(normalize_answer(a))}\b", words)}
    return named == {answer}


def test_the_chat_model_loads_with_the_auto_classes(chat):
    model, processor = chat
    assert isinstance(model, hf_llava.LlavaForConditionalGeneration)
    assert isinstance(processor, hf_llava.LlavaProcessor)


def test_the_chat_model_answers_questions_about_held_out_pictures(chat, examples):
    replies = [chat_reply(*chat, e.image, e.question) for e in examples]
    right = [says(r, e.answer, e.type) for r, e in zip(replies, examples)]
    # Greedy on the shipped weights: on transformers 4.57.6 and 5.x all three are right (colour, shape, count).
    assert sum(right) >= 2, [(e.question, r, e.answer) for e, r in zip(examples, replies)]


def test_a_reply_is_about_its_picture(chat, examples):
    """The same question about another picture gets another answer: the replies read the image."""
    count = next(e for e in examples if e.type == "count")
    other = next(e for e in examples if len(e.scene.shapes) != len(count.scene.shapes))
    assert says(chat_reply(*chat, other.image, count.question), str(len(other.scene.shapes)), "count")


def test_the_examples_are_held_out_world_pictures_with_a_question_each(examples):
    settings = chat_model_training()["settings"]
    seen = pretraining_contents() | {content(s) for s in make_scenes(settings["train_scenes"], SEED, "train")}
    seen |= prompt_example_contents(DATAGEN_TYPES)
    assert [e.type for e in examples] == list(QUESTION_TYPES[:3])
    for e in examples:
        assert e.image.size == (IMAGE_SIZE, IMAGE_SIZE) and e.image.mode == "RGB"
        assert content(e.scene) not in seen
        assert e.answer in ANSWERS[e.type] and e.question.endswith("?")
    assert len({e.scene.id for e in examples}) == 3


def test_training_json_records_the_demos_settings_and_the_accuracy():
    record = chat_model_training()
    assert (Path(chat_model_path()) / TRAINING_FILE).is_file()
    settings = record["settings"]
    # trained as a full demo run trains its stage 1 + stage 2 model: a change to the demo's sizes needs a new one
    assert {k: settings[k] for k in asdict(FULL)} == asdict(FULL)
    assert settings["seed"] == SEED and settings["datagen_types"] == list(DATAGEN_TYPES)
    vqa = record["vqa"]
    assert set(vqa["per_type"]) == set(QUESTION_TYPES) and vqa["n"] >= 4 * vqa["scenes"]
    low, high = vqa["interval"]
    assert 70 <= low <= vqa["accuracy"] <= high  # far above the majority answer's 32% on these questions


def test_the_chat_model_is_a_few_megabytes_without_training_state():
    files = {f.name: f.stat().st_size for f in Path(chat_model_path()).iterdir()}
    assert "model.safetensors" in files and TRAINING_FILE in files
    assert not {"optimizer.pt", "scheduler.pt", "training_args.bin", "trainer_state.json"} & set(files)
    assert sum(files.values()) < 8 * 2**20
