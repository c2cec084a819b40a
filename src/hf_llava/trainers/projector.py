"""The projector alone on disk (`mm_projector.safetensors`, stage 1's product) and starting stage 2 from it.

The file holds `model.multi_modal_projector.*` and, for an AnyRes (`spatial_unpad`) model, `model.image_newline`,
which trains with the projector. A file without it (a stage 1 on padded images, as the LLaVA-NeXT recipe has it)
loads into an AnyRes model, whose `image_newline` then keeps its fresh values.
"""

import os
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

PROJECTOR_FILE = "mm_projector.safetensors"
_PREFIX = "model.multi_modal_projector."
_NEWLINE = "model.image_newline"


def projector_state_dict(state_dict: dict) -> dict[str, torch.Tensor]:
    """The projector's entries of a full LLaVA state dict (also under PEFT's `base_model.model.` prefix), with
    AnyRes's `image_newline`."""
    out = {}
    for key, value in state_dict.items():
        if "multi_modal_projector." in key and ".modules_to_save." not in key and ".original_module." not in key:
            out[_PREFIX + key.split("multi_modal_projector.", 1)[1]] = value.detach().cpu().contiguous()
    for key, value in state_dict.items():  # PEFT keeps the trained copy under modules_to_save.default
        if "multi_modal_projector.modules_to_save.default." in key:
            out[_PREFIX + key.split("modules_to_save.default.", 1)[1]] = value.detach().cpu().contiguous()
        if key.split(".")[-1] == "image_newline":  # `model.image_newline` in memory, `image_newline` as saved
            out[_NEWLINE] = value.detach().cpu().contiguous()
    return out


def save_projector(state_dict: dict, path: str) -> str:
    """Write the projector weights of `state_dict` to `path` (a file, or a folder getting
    `mm_projector.safetensors`)."""
    if os.path.isdir(path) or not path.endswith(".safetensors"):
        path = os.path.join(path, PROJECTOR_FILE)
    tensors = projector_state_dict(state_dict)
    if not tensors:
        raise ValueError("The state dict has no multi_modal_projector weights to save.")
    save_file(tensors, path, metadata={"format": "pt", "content": "hf-llava projector"})
    return path


def _projector_file(path: str) -> str:
    """`path` itself, or the projector file inside the folder `path`; raises when there is none."""
    file = os.path.join(path, PROJECTOR_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: no projector file; stage 1 writes {PROJECTOR_FILE} in its output folder.")
    return file


def load_projector(model, path: str) -> None:
    """Load `mm_projector.safetensors` (a file or a folder holding it) into `model`'s projector (and AnyRes's
    `image_newline` when the file has it), checking every key."""
    path = _projector_file(path)
    tensors = load_file(path)
    projector = model.model.multi_modal_projector
    own = {k[len(_PREFIX):]: v for k, v in tensors.items() if k.startswith(_PREFIX)}
    newline, model_newline = tensors.get(_NEWLINE), getattr(model.model, "image_newline", None)
    if newline is not None and model_newline is None:
        raise ValueError(
            f"{path}: holds an AnyRes image_newline, but the model has none (image_aspect_ratio "
            f"{model.config.image_aspect_ratio!r}); load it into an AnyRes model with patch_merge_type "
            "'spatial_unpad' (image_aspect_ratio='anyres')."
        )
    missing, unexpected = projector.load_state_dict(own, strict=False)
    if missing or unexpected or not own:
        raise ValueError(
            f"{path}: projector keys do not match the model (missing {missing}, unexpected {unexpected}); was it "
            "trained for the same projector_type and sizes?"
        )
    if newline is not None:
        with torch.no_grad():
            model_newline.copy_(newline)


def load_model_with_projector(model_path: str, projector: Optional[str] = None, *, merge_adapter: bool = False,
                              **from_pretrained_kwargs):
    """Where stage 2 starts: the model folder `model_path` (a stage-1 output, or a base model), with
    `projector` (an `mm_projector.safetensors` file, or a folder holding one) loaded into it when given.

    The folder loads through `hf_llava._loading.load_llava_model` (errors that name the problem; a LoRA
    adapter folder needs `merge_adapter=True`). The projector file is checked before the model loads.
    """
    from .._loading import load_llava_model

    if projector is not None:
        _projector_file(projector)
    model = load_llava_model(model_path, merge_adapter=merge_adapter, **from_pretrained_kwargs)
    if projector is not None:
        load_projector(model, projector)
    return model


__all__ = ["PROJECTOR_FILE", "load_model_with_projector", "load_projector", "projector_state_dict", "save_projector"]
