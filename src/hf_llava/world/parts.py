"""Where the world's pretrained components live: package data written by `scripts/pretrain_world.py`.

`pretrained/vision_tower/`: a `CLIPVisionModel` with its image processor; `pretrained/language_model/`: a
`LlamaForCausalLM` with its tokenizer. Both are standard transformers folders (the Auto classes load them).
"""

from importlib import resources
from pathlib import Path

PRETRAINED = "pretrained"
VISION_TOWER = "vision_tower"
LANGUAGE_MODEL = "language_model"


def pretrained_root() -> Path:
    return Path(str(resources.files(__package__).joinpath(PRETRAINED)))


def vision_tower_path() -> str:
    """The shipped CLIP vision tower's folder."""
    return str(pretrained_root() / VISION_TOWER)


def language_model_path() -> str:
    """The shipped Llama LM's folder (weights and tokenizer)."""
    return str(pretrained_root() / LANGUAGE_MODEL)


__all__ = ["LANGUAGE_MODEL", "PRETRAINED", "VISION_TOWER", "language_model_path", "pretrained_root",
           "vision_tower_path"]
