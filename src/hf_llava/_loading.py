"""Loading a model folder a person named on the command line, with errors they can act on.

Owns: telling a full hf-llava folder from a LoRA adapter (and merging one on request), resolving an
adapter's base model path, and naming the file when weights are truncated or corrupt.
"""

import json
import os
from pathlib import Path
from typing import Optional, Union

PathLike = Union[str, os.PathLike]
ADAPTER_CONFIG = "adapter_config.json"
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


def is_adapter(path: PathLike) -> bool:
    """Whether `path` is a PEFT adapter folder (it has `adapter_config.json`)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def check_merge_adapter(path: PathLike, merge_adapter: bool, name: Optional[str] = None) -> None:
    """Refuse `merge_adapter=True` for a folder that is not a LoRA adapter: the flag would do nothing, silently.
    `name`: the argument that gave `path` (the message says `name=path`, which the CLI spells as its flag)."""
    if merge_adapter and Path(path).is_dir() and not is_adapter(path):
        named = f"{name}={path}" if name else str(path)
        raise ValueError(f"{named} is not a LoRA adapter folder (it has no {ADAPTER_CONFIG}), so there is nothing to "
                         "merge: drop merge_adapter=True, or pass the adapter's folder.")


def resolve_adapter_base(adapter_dir: PathLike) -> str:
    """The base model of a LoRA adapter: `base_model_name_or_path`, absolute or relative to the adapter.

    A relative path is tried against the adapter folder first, then the working directory; anything
    that is not a folder is an error (resolving it as a Hub id would download, or fail offline).
    """
    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter_dir / ADAPTER_CONFIG} names no base_model_name_or_path; cannot merge it.")
    candidates = [Path(base)] if os.path.isabs(base) else [adapter_dir / base, Path(base)]
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return str(candidate.resolve())
    raise FileNotFoundError(
        f"{adapter_dir}: its base model {base!r} (base_model_name_or_path in {ADAPTER_CONFIG}) is not a model "
        f"folder here (tried {', '.join(str(c) for c in candidates)}); edit that field to the base model's path."
    )


def _check_weights(path: Path) -> None:
    """Open every weights file's header, so a truncated or corrupt file is named, not a loader's traceback."""
    from safetensors import safe_open

    for pattern in _WEIGHT_PATTERNS:
        for file in sorted(path.glob(pattern)):
            try:
                if file.suffix == ".safetensors":
                    with safe_open(str(file), framework="pt") as handle:
                        list(handle.keys())
                elif file.stat().st_size == 0:
                    raise ValueError("empty file")
            except Exception as error:
                raise ValueError(
                    f"{file}: unreadable weights file ({type(error).__name__}: {error}); it is truncated or "
                    "corrupt: copy or save it again."
                ) from error


def check_device(device: Optional[str]) -> None:
    """Raise a `ValueError` a person can act on when `device` names an accelerator this machine lacks
    (`None` and "cpu" always pass)."""
    if device is None or device == "cpu":
        return
    import torch

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}, but CUDA is not available here (torch {torch.__version__}, "
                         "torch.cuda.is_available() is False): use device='cpu' or a CUDA build of torch.")


def merge_lora(model, save_directory: Optional[PathLike] = None, processor=None):
    """Fold LoRA into the weights (`merge_and_unload`) and return the plain LLaVA model, optionally saved
    (with `processor` beside it)."""
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    if save_directory is not None:
        merged.save_pretrained(save_directory)
        if processor is not None:
            processor.save_pretrained(save_directory)
    return merged


def load_llava_model(path: PathLike, *, merge_adapter: bool = False, **from_pretrained_kwargs):
    """`LlavaForConditionalGeneration.from_pretrained(path)` for a folder a user named.

    Raises `FileNotFoundError` for a missing folder, `ValueError` for a folder that is not a model (no
    config.json), a corrupt weights file (named), a LoRA adapter without `merge_adapter=True`, or
    `merge_adapter=True` for a folder that is not an adapter (`check_merge_adapter`). With `merge_adapter=True`
    an adapter is loaded onto its base model (`resolve_adapter_base`) and merged.
    """
    from .modeling import LlavaForConditionalGeneration

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such model folder; pass a folder written by save_pretrained.")
    check_merge_adapter(path, merge_adapter)
    if is_adapter(path):
        base = resolve_adapter_base(path)
        if not merge_adapter:
            raise ValueError(
                f"{path} is a LoRA adapter (adapter_config.json, base model {base}), not a full model; "
                "pass merge_adapter=True to merge it into its base model first."
            )
        from peft import PeftModel

        _check_weights(Path(base))
        _check_weights(path)
        model = LlavaForConditionalGeneration.from_pretrained(base, **from_pretrained_kwargs)
        return merge_lora(PeftModel.from_pretrained(model, str(path)))
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} has no config.json: expected a model folder written by save_pretrained.")
    _check_weights(path)
    return LlavaForConditionalGeneration.from_pretrained(path, **from_pretrained_kwargs)


__all__ = ["ADAPTER_CONFIG", "check_device", "check_merge_adapter", "is_adapter", "load_llava_model", "merge_lora",
           "resolve_adapter_base"]
