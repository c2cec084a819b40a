"""`export_onnx`: a saved hf-llava model -> a self-describing ONNX folder, validated, written atomically.

Owns: the export steps (three graphs, the fp16 / int8 variants, the copied config and processor
files, `onnx/export_info.json`), the validation against PyTorch, and the all-or-nothing move of the
result into place. The graphs themselves live in `graphs.py`; inference lives in `modeling_ort.py`.

Layout written (transformers.js / onnx-community):
    OUT_DIR/config.json, generation_config.json, tokenizer / processor files, modeling files
    OUT_DIR/onnx/{vision_encoder,embed_tokens,decoder_model_merged}{,_fp16,_quantized,_q4}.onnx
    OUT_DIR/onnx/export_info.json   (dtype exported, opset, decoder kind, validation report)

The decoder (`optimize`): `gqa` is onnxruntime-genai's model builder's graph (`builder.py`: GroupQueryAttention
over an in-place KV buffer, fused rotary and norms), `none` the decoder traced from PyTorch, which transformers.js
also runs; `auto` (the default) takes `gqa` where the builder can make this LM's decoder, else `none`.
"""

import json
import logging
import shutil
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from .._io import atomic_output, check_output_folder
from .._compat import image_features
from .._extras import require
from .._loading import is_adapter, load_llava_model, refuse_quantized, resolve_adapter_base
from . import builder, graphs
from .layout import (
    DTYPES,
    EXPORT_INFO,
    GRAPH_NAMES,
    OPTIMIZE_LEVELS,
    PROVIDERS,
    SUFFIXES,
    TOLERANCES,
    extra_for,
    onnx_file,
)

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".onnx_data", ".h5", ".msgpack")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_MODEL_FILES = ("config.json", "generation_config.json")
# transformers.js picks the model class, the KV-cache input names and the decoder sizes from `model_type`
# (configs.js `getNormalizedConfig`, models/registry.js): it knows LLaVA as `llava`, not `hf_llava`. It has no
# AnyRes packing (no `llava_next`): an AnyRes folder says `llava_next`, transformers' name, which transformers.js
# refuses to load instead of running the tiles unpacked. Nor does it know the GQA decoder's conventions (positions
# from the mask, right-aligned rows): such a folder keeps hf-llava's own `hf_llava`, which transformers.js refuses.
TRANSFORMERS_JS_MODEL_TYPE = "llava"
ANYRES_MODEL_TYPE = "llava_next"


class ExportValidationError(ValueError):
    """The exported folder does not load, or its graphs disagree with PyTorch beyond their dtype's tolerance."""


def _first_line(error: BaseException) -> str:
    """`Type: first sentence` of an error from a library, for a second line under our own message."""
    text = (str(error).strip().splitlines() or [""])[0].split(". ")[0]
    return f"{type(error).__name__}: {text[:200]}"


def _check_arguments(
    model_dir: Path, out_dir: Path, dtype: str, device: str, processor: Optional[Path], optimize: str
) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {', '.join(DTYPES)}.")
    if optimize not in OPTIMIZE_LEVELS:
        raise ValueError(f"optimize={optimize!r}: expected one of {', '.join(OPTIMIZE_LEVELS)}.")
    if device not in PROVIDERS:
        raise ValueError(f"device={device!r}: expected one of {', '.join(PROVIDERS)}.")
    # `load_llava_model` checks these too, but only once it runs: here they come before the processor's check.
    if not model_dir.is_dir():
        raise FileNotFoundError(f"MODEL_DIR {model_dir}: no such folder; pass a folder written by save_pretrained.")
    if not is_adapter(model_dir) and not (model_dir / "config.json").is_file():
        raise ValueError(f"MODEL_DIR {model_dir} has no config.json: expected a folder written by save_pretrained.")
    if processor is not None and not processor.is_dir():
        raise FileNotFoundError(f"processor={processor}: no such folder; pass the folder the processor was saved to.")
    # Replacing OUT_DIR (overwrite=True) must never delete an input.
    for name, folder in ((f"MODEL_DIR {model_dir}", model_dir), (f"processor={processor}", processor)):
        if folder is not None and (out_dir == folder or folder in out_dir.parents or out_dir in folder.parents):
            raise ValueError(f"OUT_DIR {out_dir} must not be {name}, be inside it or contain it; pick another folder.")


def _load_processor(model_dir: Path, model_source: Path, processor: Optional[Path]):
    """`(folder, LlavaProcessor)`: from `processor`, else MODEL_DIR, else (an adapter) its base model folder."""
    from hf_llava.processing import LlavaProcessor

    candidates = [processor] if processor is not None else list(dict.fromkeys([model_dir, model_source]))
    for folder in candidates:
        try:
            return folder, LlavaProcessor.from_pretrained(folder)
        except Exception as error:  # transformers raises OSError / ValueError / TypeError for missing files
            failure = error
    if processor is not None:
        raise ValueError(
            f"processor={processor} holds no loadable LlavaProcessor (tokenizer + image processor files); pass "
            f"the folder LlavaProcessor.save_pretrained wrote.\n({_first_line(failure)})"
        ) from failure
    raise ValueError(
        f"MODEL_DIR {model_dir} has no processor (tokenizer + image processor files); pass processor=DIR, a folder "
        f"LlavaProcessor.save_pretrained wrote (the base model's, usually).\n({_first_line(failure)})"
    ) from failure


def decoder_kind(model, optimize: str) -> tuple[str, Optional[str]]:
    """`("gqa" | "none", why not gqa)` for `optimize` in auto / gqa / none; `gqa` that cannot be made raises."""
    reason = builder.unavailable_reason(model.config.text_config) if optimize != "none" else "optimize='none'"
    if optimize == "gqa" and reason:
        raise ValueError(f"optimize='gqa' (--optimize gqa): {reason}. Use optimize='none' to trace the decoder.")
    return ("none", reason) if reason else ("gqa", None)


def decoder_description(decoder: str) -> str:
    if decoder == "gqa":
        return f"GroupQueryAttention (onnxruntime-genai {builder.builder_version()} model builder)"
    return "traced from PyTorch (the layout transformers.js runs)"


def _export_graphs(model, tokenizer, onnx_dir: Path, opset: int, decoder: str, progress) -> None:
    def export_gqa_decoder(model, path: Path, opset: int) -> None:
        builder.build_decoder(model, tokenizer, path, "fp32")

    steps = (
        ("vision_encoder", graphs.export_vision_encoder),
        ("embed_tokens", graphs.export_embed_tokens),
        ("decoder_model_merged", export_gqa_decoder if decoder == "gqa" else graphs.export_decoder),
    )
    for name, export in steps:
        progress.set_description(f"export {name}" + (" (GroupQueryAttention)" if export is export_gqa_decoder else ""))
        try:
            export(model, onnx_dir / f"{name}.onnx", opset)
        except Exception as error:
            part = "language model" if name == "decoder_model_merged" else name.replace("_", " ")
            lm_type = model.config.text_config.model_type
            raise RuntimeError(
                f"Exporting the {part} ({name}.onnx, LM type {lm_type!r}, opset {opset}) failed: "
                f"{type(error).__name__}: {error}. Try another --opset (17 or 18), a decoder transformers "
                "supports with sdpa/eager attention (llama, mistral, qwen2), and merge any adapter first."
            ) from error
        progress.update(1)


def _write_variant(onnx_dir: Path, dtype: str, model, tokenizer, decoder: str) -> None:
    """fp16: every float tensor to half (inputs and cache included, for CUDA; the GQA decoder is the builder's
    fp16 graph). int8: dynamic quantization (MatMul / Gemm / Gather). int4: weight-only 4-bit `MatMulNBits`
    (block 32, symmetric; `accuracy_level` 4: int8 compute on CPU) by onnxruntime's quantizer."""
    import onnx

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    # the quantizers log hints and per-node lines on the root logger, and importing the 4-bit one calls
    # logging.basicConfig (a handler at INFO on the root logger): both are undone below
    root.setLevel(logging.ERROR)
    try:
        if dtype == "int4":
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            root.setLevel(logging.ERROR)
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.transformers.float16 import convert_float_to_float16

        for graph in GRAPH_NAMES:
            source, target = onnx_dir / f"{graph}.onnx", onnx_dir / f"{graph}{SUFFIXES[dtype]}.onnx"
            large = source.stat().st_size > 1_800_000_000 or any(onnx_dir.glob(f"{graph}.onnx*data"))
            if dtype == "fp16" and graph == "decoder_model_merged" and decoder == "gqa":
                builder.build_decoder(model, tokenizer, target, "fp16")
            elif dtype == "fp16":
                half = convert_float_to_float16(onnx.load(str(source)), keep_io_types=False)
                onnx.save(half, str(target), save_as_external_data=large, location=f"{target.name}_data")
            elif dtype == "int8":
                quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8,
                                 op_types_to_quantize=["MatMul", "Gemm", "Gather"], use_external_data_format=large)
            else:
                quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), block_size=32, is_symmetric=True,
                                                 accuracy_level=4)
                quantizer.process()
                quantizer.model.save_model_to_file(str(target), use_external_data_format=large)
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers


def _copy_side_files(
    model_source: Path, out_dir: Path, model, processor, processor_source: Path, decoder: str
) -> None:
    """Config, generation config and modeling files, no weights; the processor's files from where it was found."""
    separate = processor_source != model_source
    for path in model_source.iterdir():
        if not path.is_file() or path.name.endswith(_WEIGHT_SUFFIXES) or path.name in _WEIGHT_INDEXES:
            continue
        if separate and path.name not in _MODEL_FILES and path.suffix != ".py":
            continue  # the processor comes from elsewhere: no stray tokenizer / image processor files from here
        shutil.copy2(path, out_dir / path.name)
    if separate:
        processor.save_pretrained(out_dir)
    if not (out_dir / "preprocessor_config.json").is_file():
        # transformers.js reads the image processor from its own file; transformers 5 nests it in processor_config.json
        processor.image_processor.save_pretrained(out_dir)
    if not (out_dir / "generation_config.json").is_file():
        model.generation_config.save_pretrained(out_dir)
    # The folder holds no PyTorch weights; `ORTLlavaForConditionalGeneration` reads it back with hf-llava's
    # `LlavaConfig` whatever `model_type` says, and transformers.js needs `llava` to load it.
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    anyres = model.config.image_aspect_ratio == "anyres"
    if anyres:
        config["model_type"] = ANYRES_MODEL_TYPE
    else:
        config["model_type"] = TRANSFORMERS_JS_MODEL_TYPE if decoder == "none" else model.config.model_type
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _check_processor_loads(folder: Path) -> None:
    from hf_llava.processing import LlavaProcessor

    try:
        LlavaProcessor.from_pretrained(folder)
    except Exception as error:
        raise ExportValidationError(
            f"The exported folder's processor does not load ({_first_line(error)}); nothing was written."
        ) from error


def _validation_images(model, generator: torch.Generator) -> tuple[dict, list[int]]:
    """Two random images as the model takes them and each one's visual token count.

    Fixed resolution: `pixel_values (2, 3, H, W)`, `num_image_tokens` each. AnyRes: `pixel_values (2, max_tiles, 3,
    H, W)` and `image_sizes` of the widest and the tallest grid's shapes, cut by a quarter so that unpadding
    removes rows of one and columns of the other; the counts are the PyTorch model's own packing.
    """
    config = model.config
    size = config.vision_config.image_size
    if config.image_aspect_ratio != "anyres":
        pixel_values = torch.randn(2, 3, size, size, generator=generator)
        return {"pixel_values": pixel_values}, [config.num_image_tokens] * 2
    (wide_h, wide_w), (tall_h, tall_w) = (max(config.image_grid_pinpoints, key=lambda p: p[1] / p[0]),
                                          max(config.image_grid_pinpoints, key=lambda p: p[0] / p[1]))
    images = {
        "pixel_values": torch.randn(2, config.max_tiles, 3, size, size, generator=generator),
        "image_sizes": torch.tensor([[max(1, wide_h * 3 // 4), wide_w], [tall_h, max(1, tall_w * 3 // 4)]]),
    }
    with torch.no_grad():
        packed = image_features(model.get_image_features(**images))  # a tuple of (tokens_i, hidden)
    return images, [len(features) for features in packed]


def _validation_inputs(model, seed: int = 0) -> dict:
    """A left-padded batch of 2 prompts, each with one image: `input_ids`, `attention_mask`, `pixel_values` (and
    AnyRes's `image_sizes`)."""
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    special = {config.image_token_id, config.text_config.eos_token_id, config.text_config.pad_token_id}
    vocab = [i for i in range(4, config.text_config.vocab_size) if i not in special]
    pad = config.text_config.pad_token_id or 0
    images, counts = _validation_images(model, generator)
    rows = []
    for n_text, n_image in zip((6, 3), counts):
        text = [vocab[int(i)] for i in torch.randint(len(vocab), (n_text,), generator=generator)]
        rows.append(text[:2] + [config.image_token_id] * n_image + text[2:])
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return {"input_ids": input_ids, "attention_mask": attention_mask, **images}


def validate_export(
    model, export_dir: Union[str, Path], dtype: str = "fp32", device: str = "cpu", max_new_tokens: int = 8
) -> dict:
    """Compare the exported graphs with `model` (PyTorch, fp32) on a left-padded batch of 2 image prompts (AnyRes:
    of two aspect ratios).

    Returns `{provider, dtype, max_abs_diff, relative_diff, tolerance, tokens_match}`; raises
    `ExportValidationError` when fp32 greedy tokens differ, logits are not finite, or the first-step logits
    exceed `TOLERANCES[dtype]`.
    """
    from .modeling_ort import ORTLlavaForConditionalGeneration

    ort_model = ORTLlavaForConditionalGeneration.from_pretrained(export_dir, provider=PROVIDERS[device], dtype=dtype)
    inputs = _validation_inputs(model)
    mask = inputs["attention_mask"].bool()
    with torch.no_grad():
        position_ids = (inputs["attention_mask"].cumsum(-1) - 1).masked_fill(~mask, 1)
        reference = model(**inputs, position_ids=position_ids).logits.float().numpy()
        gen = dict(do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                   pad_token_id=model.config.text_config.pad_token_id or 0)
        torch_tokens = model.generate(**inputs, **gen)
    logits = ort_model.first_step_logits(**inputs)
    ort_tokens = ort_model.generate(**inputs, **gen)
    # padded positions see nothing and are garbage in both; compare the real ones
    diff = float(np.abs(logits - reference)[mask.numpy()].max())
    scale = max(1.0, float(np.abs(reference[mask.numpy()]).max()))
    report = {
        "provider": ort_model.provider,
        "dtype": dtype,
        "max_abs_diff": diff,
        "relative_diff": diff / scale,
        "tolerance": TOLERANCES[dtype],
        "tokens_match": bool(torch.equal(torch_tokens, ort_tokens)),
    }
    if device == "cuda" and ort_model.provider != "CUDAExecutionProvider":
        report["warning"] = (
            f"CUDA was requested but ONNX Runtime runs on {ort_model.provider} (onnxruntime-gpu missing, or no CUDA "
            "device / libraries): the validation ran on CPU."
        )
    if not np.isfinite(logits[mask.numpy()]).all():
        if not np.isfinite(reference[mask.numpy()]).all():
            cause = "so does PyTorch: the model's weights hold NaN / inf; check or re-save the checkpoint."
        else:
            cause = "PyTorch's are finite: the variant overflows; use dtype='fp32'."
        raise ExportValidationError(f"{dtype} export: the graphs produce non-finite logits (NaN or inf); {cause}")
    if dtype == "fp32" and not report["tokens_match"]:
        raise ExportValidationError(
            f"fp32 export: greedy tokens differ from PyTorch (torch {torch_tokens.tolist()}, onnx "
            f"{ort_tokens.tolist()}; first-step max abs diff {diff:.3g}). The graph is wrong; please report it."
        )
    if not report["relative_diff"] <= TOLERANCES[dtype]:
        raise ExportValidationError(
            f"{dtype} export: first-step logits differ from PyTorch by {diff:.3g} (relative {diff / scale:.3g}), "
            f"above the {dtype} tolerance {TOLERANCES[dtype]} (relative to max(1, max |logits|)). "
            "Use dtype='fp32', or validate=False to keep it anyway."
        )
    return report


def validation_summary(report: dict) -> str:
    """The one line `export_onnx` prints for a `validate_export` report."""
    if report["tokens_match"]:
        tokens = "greedy tokens match"
    else:  # fp32 never gets here (it raises); fp16 / int8 round differently, so a near tie can flip
        within = "within" if report["relative_diff"] <= report["tolerance"] else "beyond"
        tokens = f"greedy tokens differ (expected for {report['dtype']}: logits {within} tolerance)"
    return (
        f"validation ({report['dtype']}, provider {report['provider']}): first-step max abs diff "
        f"{report['max_abs_diff']:.3g} (relative {report['relative_diff']:.3g}, tolerance {report['tolerance']}), "
        f"{tokens}"
    )


def export_onnx(
    model_dir: Union[str, Path],
    out_dir: Union[str, Path],
    dtype: str = "fp32",
    device: str = "cpu",
    opset: int = 17,
    validate: bool = True,
    show_progress: bool = True,
    *,
    processor: Union[str, Path, None] = None,
    overwrite: bool = False,
    merge_adapter: bool = False,
    optimize: str = "auto",
) -> Path:
    """Export the hf-llava model saved in `model_dir` to `out_dir` (see the module docstring for the layout).

    `dtype`: `fp32` (always written, the reference), `fp16` (for CUDA, suffix `_fp16`), `int8` (dynamic
    quantization, suffix `_quantized`) or `int4` (weight-only 4-bit, suffix `_q4`) written beside it.
    `optimize`: the decoder graph, `auto` / `gqa` / `none` (see the module docstring). `device`: the execution
    provider validation runs on. `processor`: a folder holding the processor files (tokenizer, image
    processor), for a `model_dir` without them (the default is `model_dir`'s own, or for a LoRA adapter its base
    model's). `overwrite`: replace an existing non-empty `out_dir`. `merge_adapter`: `model_dir` may be a LoRA
    adapter, merged into its base model. Returns `out_dir`. Bad inputs raise before any slow work; nothing is
    written to `out_dir` until every step succeeded, validation and loading the processor back included.
    """
    model_dir, out_dir = Path(model_dir).resolve(), Path(out_dir).resolve()
    processor_dir = None if processor is None else Path(processor).resolve()
    _check_arguments(model_dir, out_dir, dtype, device, processor_dir, optimize)
    refuse_quantized(model_dir, "hf-llava export-onnx")  # a 4 / 8-bit folder: export the full-precision one
    require("onnx", extra_for(device), "ONNX export")
    if validate or dtype != "fp32":
        require("onnxruntime", extra_for(device), "Validating the export and writing fp16 / int8 / int4 variants")
    check_output_folder(out_dir, overwrite, what="OUT_DIR")
    model_source = Path(resolve_adapter_base(model_dir)) if is_adapter(model_dir) else model_dir
    processor_source, llava_processor = _load_processor(model_dir, model_source, processor_dir)
    # before the progress bar: an adapter without merge_adapter=True or corrupt weights fail in one clean message
    model = load_llava_model(model_dir, merge_adapter=merge_adapter, dtype=torch.float32).eval()
    decoder, why_not_gqa = decoder_kind(model, optimize)
    total = 5 + (dtype != "fp32") + bool(validate)  # 3 graphs, side files, move (+ variant, + validation)
    with tqdm(total=total, desc="export", disable=not show_progress) as progress:
        # nothing appears at out_dir unless every step succeeds
        with atomic_output(out_dir, overwrite, what="OUT_DIR") as tmp_dir:
            onnx_dir = tmp_dir / "onnx"
            onnx_dir.mkdir()
            _export_graphs(model, llava_processor.tokenizer, onnx_dir, opset, decoder, progress)
            if dtype != "fp32":
                progress.set_description(f"write {dtype} variant")
                _write_variant(onnx_dir, dtype, model, llava_processor.tokenizer, decoder)
                progress.update(1)
            progress.set_description("copy config and processor")
            _copy_side_files(model_source, tmp_dir, model, llava_processor, processor_source, decoder)
            _check_processor_loads(tmp_dir)
            info = {"dtype": dtype, "opset": opset, "files": [onnx_file(dtype, g) for g in GRAPH_NAMES],
                    "decoder": decoder_description(decoder)}
            (tmp_dir / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
            progress.update(1)
            if validate:
                progress.set_description(f"validate on {device}")
                info["validation"] = validate_export(model, tmp_dir, dtype, device)
                (tmp_dir / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
                progress.update(1)
            progress.set_description("move into place")
        progress.update(1)
    print(f"decoder: {info['decoder']}" + (f" ({why_not_gqa})" if optimize == "auto" and why_not_gqa else ""))
    if validate:
        print(validation_summary(info["validation"]))
        if "warning" in info["validation"]:
            print(f"warning: {info['validation']['warning']}")
    return out_dir
