"""Loading a model folder a person named on the command line, with errors they can act on.

Owns: telling a full hf-llava folder from a LoRA adapter (and merging one on request), resolving an
adapter's base model path, naming the file when weights are truncated or corrupt, and bitsandbytes
quantisation (`bitsandbytes_config`, loading in 4 / 8 bits, refusing quantised folders where full-precision
weights are needed).
"""

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
ADAPTER_CONFIG = "adapter_config.json"
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
# transformers' own LLaVA families, which llava-hf folders (and `hf-llava convert --to llava-hf`) use
TRANSFORMERS_LLAVA_TYPES = ("llava", "llava_next")
# bitsandbytes: the widths a model loads in and the 4-bit data types (nf4: the QLoRA paper's NormalFloat).
QUANT_BITS = (4, 8)
BNB_QUANT_TYPES = ("nf4", "fp4")


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


def bitsandbytes_config(bits: int, quant_type: Optional[str] = None, double_quant: Optional[bool] = None,
                        compute_dtype=None, device: Optional[str] = None):
    """A `transformers.BitsAndBytesConfig` loading the language model in `bits` (4 or 8).

    4-bit: `quant_type` nf4 (default: the QLoRA paper's NormalFloat) or fp4, `double_quant` (default on: the
    quantisation constants quantised too, ~0.4 bits a weight saved) and `compute_dtype` (the matmuls' dtype;
    default bfloat16 on a CUDA `device` that has it, else float32). The defaults are the original LLaVA's, for its
    `--load-4bit` and its QLoRA training alike. 8-bit: LLM.int8, which takes no 4-bit option. Raises
    `MissingExtraError` (the `[quant]` extra) without bitsandbytes. The vision tower, the projector and the LM
    head are not quantised (`LlavaForConditionalGeneration._quantization_skip_modules`).
    """
    from ._extras import require

    if bits not in QUANT_BITS:
        raise ValueError(f"bits={bits!r}: expected 4 or 8.")
    if quant_type is not None and quant_type not in BNB_QUANT_TYPES:
        raise ValueError(f"quant_type={quant_type!r}: expected one of {', '.join(BNB_QUANT_TYPES)}.")
    if bits == 8 and (quant_type is not None or double_quant is not None):
        raise ValueError("quant_type and double_quant are 4-bit options; 8-bit loading (LLM.int8) takes neither.")
    require("bitsandbytes", "quant", f"Loading in {bits}-bit")
    import torch
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    if compute_dtype is None:
        on_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
        compute_dtype = torch.bfloat16 if on_cuda and torch.cuda.is_bf16_supported() else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type or "nf4",
                              bnb_4bit_use_double_quant=True if double_quant is None else double_quant,
                              bnb_4bit_compute_dtype=compute_dtype)


def quantization_of(path: PathLike) -> Optional[dict]:
    """The `quantization_config` a saved model folder declares in its config.json (None: full precision)."""
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config.get("quantization_config") or None


def refuse_quantized(model_dir: PathLike, what: str) -> None:
    """Raise a `ValueError` when `model_dir` holds quantised weights (a `quantization_config` in its config.json):
    `what` ("hf-llava export-onnx") needs the full-precision weights, which the folder no longer has."""
    quantization = quantization_of(model_dir)
    if quantization is None:
        return
    method = quantization.get("quant_method", "quantised")
    bits = "4-bit" if quantization.get("load_in_4bit") else "8-bit" if quantization.get("load_in_8bit") else ""
    raise ValueError(f"{model_dir} holds {' '.join(filter(None, (bits, method)))} weights (quantization_config in its "
                     f"config.json), which {what} cannot take: export the full-precision folder it was loaded "
                     "from instead.")


def _merge_then_quantize(model_class, base: str, adapter: Path, quantization_config, kwargs: dict):
    """An adapter merged into its base loaded in full precision, then quantised: merging into 4 / 8-bit weights
    would round the merged sum again (PEFT warns), so the merge is done on the full weights and the result is
    loaded back through `quantization_config` from a temporary folder."""
    from peft import PeftModel

    logger.info("Merging the LoRA adapter %s into its base model %s loaded in full precision; the merged model "
                "is then quantised.", adapter, base)
    full_kwargs = {k: v for k, v in kwargs.items() if k != "device_map"}
    merged = merge_lora(PeftModel.from_pretrained(model_class.from_pretrained(base, **full_kwargs), str(adapter)))
    with tempfile.TemporaryDirectory(prefix="hf-llava-merged-") as folder:
        merged.save_pretrained(folder)
        del merged
        return model_class.from_pretrained(folder, quantization_config=quantization_config, **kwargs)


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
        quantization = from_pretrained_kwargs.pop("quantization_config", None)
        if quantization is not None:
            return _merge_then_quantize(LlavaForConditionalGeneration, base, path, quantization,
                                        from_pretrained_kwargs)
        model = LlavaForConditionalGeneration.from_pretrained(base, **from_pretrained_kwargs)
        return merge_lora(PeftModel.from_pretrained(model, str(path)))
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} has no config.json: expected a model folder written by save_pretrained.")
    _check_weights(path)
    return LlavaForConditionalGeneration.from_pretrained(path, **from_pretrained_kwargs)


def _model_type(path: Path) -> Optional[str]:
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return None


def load_pytorch_model(path: PathLike, device: Optional[str] = None, merge_adapter: bool = False,
                       quantization_config=None) -> tuple[Any, Any]:
    """`(model, processor)` from a PyTorch folder a user named, evaluation-ready on `device` (default: CUDA when
    there is one): an hf-llava folder, a LoRA adapter with `merge_adapter=True`, or a llava-hf folder (transformers'
    own `llava` / `llava_next` classes, as its config declares). Full precision in bf16 on CUDA, fp32 on CPU; with
    `quantization_config` (`bitsandbytes_config`) the LM in 4 / 8 bits, placed by the loader (bitsandbytes layers
    do not move afterwards), the rest in the checkpoint's dtype, an adapter merged in full precision first."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ._compat import PIL_IMAGE_PROCESSOR_KWARGS
    from .modeling import LlavaForConditionalGeneration
    from .modeling.modeling_llava import skip_vision_in_quantization

    path = Path(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if quantization_config is None:
        kwargs = {"dtype": torch.bfloat16 if device.startswith("cuda") else torch.float32}
    else:
        kwargs = {"quantization_config": quantization_config, "device_map": {"": device}}
    if _model_type(path) in TRANSFORMERS_LLAVA_TYPES:  # llava-hf: transformers' classes, as the folder declares
        _check_weights(path)
        if quantization_config is not None:  # the tower and projector kept out, as ours keep them
            kwargs["quantization_config"] = skip_vision_in_quantization(
                quantization_config, LlavaForConditionalGeneration._quantization_skip_modules)
            kwargs["dtype"] = "auto"
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        processor = AutoProcessor.from_pretrained(path, **PIL_IMAGE_PROCESSOR_KWARGS)
    else:
        model = load_llava_model(path, merge_adapter=merge_adapter, **kwargs)
        try:
            processor = AutoProcessor.from_pretrained(path)
        except (OSError, ValueError, TypeError):
            if not is_adapter(path):
                raise
            processor = AutoProcessor.from_pretrained(resolve_adapter_base(path))  # adapters often save no processor
    if quantization_config is None:
        model = model.to(device)
    return model.eval(), processor


def load_quantized(path: PathLike, quantization_config, *, merge_adapter: bool = False,
                   device: Optional[str] = None) -> tuple[Any, Any]:
    """`load_pytorch_model` with the language model in 4 / 8 bits (`quantization_config`, from
    `bitsandbytes_config`)."""
    return load_pytorch_model(path, device, merge_adapter, quantization_config)


__all__ = ["ADAPTER_CONFIG", "BNB_QUANT_TYPES", "QUANT_BITS", "TRANSFORMERS_LLAVA_TYPES", "bitsandbytes_config",
           "check_device", "check_merge_adapter", "is_adapter", "load_llava_model", "load_pytorch_model",
           "load_quantized", "merge_lora", "quantization_of", "refuse_quantized", "resolve_adapter_base"]
