"""The projector alone on disk (`mm_projector.safetensors`, stage 1's product) and starting stage 2 from it."""

import os
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

PROJECTOR_FILE = "mm_projector.safetensors"
_PREFIX = "model.multi_modal_projector."


def projector_state_dict(state_dict: dict) -> dict[str, torch.Tensor]:
    """The projector's entries of a full LLaVA state dict (also under PEFT's `base_model.model.` prefix)."""
    out = {}
    for key, value in state_dict.items():
        if "multi_modal_projector." in key and ".modules_to_save." not in key and ".original_module." not in key:
            out[_PREFIX + key.split("multi_modal_projector.", 1)[1]] = value.detach().cpu().contiguous()
    for key, value in state_dict.items():  # PEFT keeps the trained copy under modules_to_save.default
        if "multi_modal_projector.modules_to_save.default." in key:
            out[_PREFIX + key.split("modules_to_save.default.", 1)[1]] = value.detach().cpu().contiguous()
    return out


def save_projector(state_dict: dict, path: str) -> str:
    """Write the projector weights of `state_dict` to `path` (a file, or a folder getting `mm_projector.safetensors`)."""
    if os.path.isdir(path) or not path.endswith(".safetensors"):
        path = os.path.join(path, PROJECTOR_FILE)
    tensors = projector_state_dict(state_dict)
    if not tensors:
        raise ValueError("The state dict has no multi_modal_projector weights to save.")
    save_file(tensors, path, metadata={"format": "pt", "content": "hf-llava projector"})
    return path


def load_projector(model, path: str) -> None:
    """Load `mm_projector.safetensors` (a file or a folder holding it) into `model`'s projector, checking every key."""
    if os.path.isdir(path):
        path = os.path.join(path, PROJECTOR_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no projector file; stage 1 writes {PROJECTOR_FILE} in its output folder.")
    tensors = load_file(path)
    projector = model.model.multi_modal_projector
    own = {k[len(_PREFIX):]: v for k, v in tensors.items() if k.startswith(_PREFIX)}
    missing, unexpected = projector.load_state_dict(own, strict=False)
    if missing or unexpected or not own:
        raise ValueError(
            f"{path}: projector keys do not match the model (missing {missing}, unexpected {unexpected}); was it "
            "trained for the same projector_type and sizes?"
        )


def load_stage1_output(path: str, base_model: Optional[str] = None, **from_pretrained_kwargs):
    """The model stage 2 starts from: a full stage-1 folder, or `base_model` + a projector file or folder."""
    from ..modeling import LlavaForConditionalGeneration

    has_config = os.path.isfile(os.path.join(path, "config.json"))
    if base_model is None:
        if not has_config:
            raise ValueError(f"{path}: not a model folder (no config.json); pass base_model= with a projector file.")
        return LlavaForConditionalGeneration.from_pretrained(path, **from_pretrained_kwargs)
    model = LlavaForConditionalGeneration.from_pretrained(base_model, **from_pretrained_kwargs)
    load_projector(model, path)
    return model


__all__ = ["PROJECTOR_FILE", "load_projector", "load_stage1_output", "projector_state_dict", "save_projector"]
