"""Where the world's pretrained components live: package data written by `scripts/pretrain_world.py` and
`scripts/train_chat_model.py`.

`pretrained/vision_tower/`: a `CLIPVisionModel` with its image processor; `pretrained/language_model/`: a
`LlamaForCausalLM` with its tokenizer; `pretrained/chat_model/`: the demo's stage 1 + stage 2 LLaVA built from
both, with its processor and `training.json` (its settings and VQA accuracy). All are standard transformers folders
(the Auto classes load them; the chat model after `import hf_llava`). `example_images()` draws a few held-out
pictures with a question each, for a chat page. Light to import: heavy modules load inside the functions.
"""

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Optional

PRETRAINED = "pretrained"
VISION_TOWER = "vision_tower"
LANGUAGE_MODEL = "language_model"
CHAT_MODEL = "chat_model"
TRAINING_FILE = "training.json"  # beside the chat model's weights: how it was trained and what it scores


def pretrained_root() -> Path:
    return Path(str(resources.files(__package__).joinpath(PRETRAINED)))


def vision_tower_path() -> str:
    """The shipped CLIP vision tower's folder."""
    return str(pretrained_root() / VISION_TOWER)


def language_model_path() -> str:
    """The shipped Llama LM's folder (weights and tokenizer)."""
    return str(pretrained_root() / LANGUAGE_MODEL)


def chat_model_path() -> str:
    """The shipped chat model's folder: the demo's stage 1 + stage 2 LLaVA with its processor and `training.json`."""
    return str(pretrained_root() / CHAT_MODEL)


def chat_model_training() -> dict:
    """The chat model's `training.json`: its training settings (`"settings"`: seed, scene and step counts...) and
    its VQA accuracy on the demo's held-out test scenes (`"vqa"`)."""
    return json.loads((Path(chat_model_path()) / TRAINING_FILE).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class ChatExample:
    """A held-out world picture, a question about it and the question's right short answer."""

    image: Any  # a PIL image (RGB, the world's IMAGE_SIZE pixels square)
    question: str
    answer: str  # the canonical short answer ("red", "3", "top left", "yes")
    type: str  # one of world.questions.QUESTION_TYPES
    scene: Any  # the world.scenes.Scene drawn


def example_images(n: int = 3, settings: Optional[dict] = None) -> list[ChatExample]:
    """The first `n` of the demo's held-out test scenes (none shows what a pretraining, a training or a prompt-example
    scene of the chat model shows), drawn with the world's renderer, each with its test question of the question
    types in turn (colour, shape, count, ...; a type the scene cannot support gives way to the next).
    `settings`: a chat model's training settings (default: the shipped one's, `chat_model_training()`)."""
    from .questions import QUESTION_TYPES, make_questions
    from .scenes import draw, make_scenes
    from .splits import content, heldout_scenes, pretraining_contents, prompt_example_contents

    if n < 1:
        raise ValueError(f"n={n}: expected at least one example.")
    settings = settings if settings is not None else chat_model_training()["settings"]
    seed = settings["seed"]
    seen = pretraining_contents() | {content(s) for s in make_scenes(settings["train_scenes"], seed, "train")}
    seen |= prompt_example_contents(settings["datagen_types"])
    examples = []
    for k, scene in enumerate(heldout_scenes(n, seed, "test", seen)):
        questions = {q["type"]: q for q in make_questions([scene], seed, {scene.id: ""})}
        kind = next(t for j in range(len(QUESTION_TYPES))
                    if (t := QUESTION_TYPES[(k + j) % len(QUESTION_TYPES)]) in questions)
        examples.append(ChatExample(draw(scene), questions[kind]["question"], questions[kind]["answer"], kind, scene))
    return examples


__all__ = ["CHAT_MODEL", "ChatExample", "LANGUAGE_MODEL", "PRETRAINED", "TRAINING_FILE", "VISION_TOWER",
           "chat_model_path", "chat_model_training", "example_images", "language_model_path", "pretrained_root",
           "vision_tower_path"]
