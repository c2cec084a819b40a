"""Loading what a user names as a model: a saved hf-llava folder (PyTorch, a LoRA adapter merged on request) or an
`hf-llava export-onnx` folder (ONNX Runtime), with the processor beside it. `hf-llava eval` and `hf-llava serve`
take either through `load_model`.
"""

import os
from pathlib import Path
from typing import Any, Optional, Union

from .._loading import check_device, check_merge_adapter, is_adapter
from .layout import EXPORT_INFO, PROVIDERS

PathLike = Union[str, os.PathLike]


def is_onnx_folder(path: PathLike) -> bool:
    """Whether `path` is an `hf-llava export-onnx` folder (it has `onnx/export_info.json`)."""
    return (Path(path) / EXPORT_INFO).is_file()


def check_model(path: PathLike, merge_adapter: bool = False, device: Optional[str] = None) -> Path:
    """A model folder's path, checked with the flags that go with it before anything loads (errors name
    `model=PATH`)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model={path}: no such folder; pass a saved hf-llava folder or an "
                                "`hf-llava export-onnx` folder.")
    if not (is_onnx_folder(path) or is_adapter(path) or (path / "config.json").is_file()):
        raise ValueError(f"model={path} has no config.json and no {EXPORT_INFO}: pass a folder written by "
                         "save_pretrained or by `hf-llava export-onnx`.")
    check_merge_adapter(path, merge_adapter, "model")  # else the flag would be ignored without a word
    if device is not None and device.split(":")[0] not in PROVIDERS:
        raise ValueError(f"device={device!r}: expected one of {', '.join(PROVIDERS)}.")
    if not is_onnx_folder(path):  # ONNX Runtime reports the provider it runs on itself
        check_device(device)
    return path


def load_model(
    path: PathLike, device: Optional[str] = None, merge_adapter: bool = False, onnx_dtype: str = "auto",
    quantization_config=None,
) -> tuple[Any, Any]:
    """`(model, processor)` from a saved hf-llava folder, a llava-hf folder (transformers' own `llava` /
    `llava_next` classes, through the Auto classes) or an ONNX export folder.

    `device`: `cpu` or `cuda` (default: cuda when available for PyTorch, the CPU provider for ONNX). A LoRA
    adapter folder is merged into its base model with `merge_adapter=True`. `onnx_dtype`: which variant of an ONNX
    folder (`auto`: the most precise present; `fp32`, `fp16`, `int8`, `int4`); anything but `auto` for a PyTorch
    folder is an error. `quantization_config` (`_loading.bitsandbytes_config`): a PyTorch folder's LM in 4 / 8 bits.
    """
    path = check_model(path, merge_adapter, device)
    if onnx_dtype != "auto" and not is_onnx_folder(path):
        raise ValueError(f"onnx_dtype={onnx_dtype!r} picks a variant of an `hf-llava export-onnx` folder; model={path} "
                         "is a PyTorch folder: drop it, or pass the export's folder.")
    if is_onnx_folder(path) and quantization_config is not None:
        raise ValueError(f"model={path} is an ONNX export; 4 / 8-bit loading (bitsandbytes) quantises PyTorch "
                         "weights: pass the PyTorch folder it was exported from.")
    if is_onnx_folder(path):
        from .modeling_ort import ORTLlavaForConditionalGeneration
        from ..processing import LlavaProcessor

        provider = PROVIDERS[(device or "cpu").split(":")[0]]
        return ORTLlavaForConditionalGeneration.from_pretrained(path, provider=provider, dtype=onnx_dtype), \
            LlavaProcessor.from_pretrained(path)
    from .._loading import load_pytorch_model

    return load_pytorch_model(path, device, merge_adapter, quantization_config)


__all__ = ["check_model", "is_onnx_folder", "load_model"]
