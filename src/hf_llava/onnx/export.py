"""`export_onnx`: a saved hf-llava model -> a self-describing ONNX folder, validated, written atomically.

Owns: the export steps (three graphs, the fp16 / int8 variants, the copied config and processor
files, `onnx/export_info.json`), the validation against PyTorch, and the all-or-nothing move of the
result into place. The graphs themselves live in `graphs.py`; inference lives in `modeling_ort.py`.

Layout written (transformers.js / onnx-community):
    OUT_DIR/config.json, generation_config.json, tokenizer / processor files, modeling files
    OUT_DIR/onnx/{vision_encoder,embed_tokens,decoder_model_merged}{,_fp16,_quantized}.onnx
    OUT_DIR/onnx/export_info.json   (dtype exported, opset, validation report)
"""

import json
import logging
import shutil
from pathlib import Path
from typing import Union

import numpy as np
import torch
from tqdm.auto import tqdm

from .._atomic import atomic_folder

from . import graphs

DTYPES = ("fp32", "fp16", "int8")
SUFFIXES = {"fp32": "", "fp16": "_fp16", "int8": "_quantized"}
GRAPH_NAMES = ("vision_encoder", "embed_tokens", "decoder_model_merged")
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# Max |logits_ort - logits_torch| on the first step, relative to max(1, max |logits_torch|).
TOLERANCES = {"fp32": 1e-3, "fp16": 5e-2, "int8": 0.15}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".onnx_data", ".h5", ".msgpack")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# transformers.js picks the model class, the KV-cache input names and the decoder sizes from `model_type`
# (configs.js `getNormalizedConfig`, models/registry.js): it knows LLaVA as `llava`, not `hf_llava`.
TRANSFORMERS_JS_MODEL_TYPE = "llava"


class ExportValidationError(RuntimeError):
    """The exported graphs disagree with PyTorch beyond the tolerance of their dtype."""


def onnx_file(dtype: str, graph: str) -> str:
    """`onnx/<graph><suffix>.onnx` for `dtype` in fp32 / fp16 / int8."""
    return f"onnx/{graph}{SUFFIXES[dtype]}.onnx"


def _check_arguments(model_dir: Path, out_dir: Path, dtype: str, device: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {', '.join(DTYPES)}.")
    if device not in PROVIDERS:
        raise ValueError(f"device={device!r}: expected one of {', '.join(PROVIDERS)}.")
    if (model_dir / "adapter_config.json").is_file():
        raise ValueError(
            f"{model_dir} holds a PEFT adapter (adapter_config.json), not a full model. Merge it first: "
            "`PeftModel.from_pretrained(base_model, MODEL_DIR).merge_and_unload().save_pretrained(MERGED_DIR)`, "
            "save the processor next to it, then export MERGED_DIR."
        )
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{model_dir} has no config.json: expected a folder written by `save_pretrained` (model + processor)."
        )
    if out_dir == model_dir or model_dir in out_dir.parents:
        raise ValueError(f"OUT_DIR {out_dir} must not be MODEL_DIR or inside it; pick another folder.")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "onnx").is_dir():
        raise FileExistsError(
            f"{out_dir} exists, is not empty and is not an ONNX export (no onnx/ folder); refusing to replace it. "
            "Pick a new OUT_DIR or remove it."
        )


def _load_model(model_dir: Path):
    from hf_llava.modeling import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    if any("lora_" in name for name, _ in model.named_parameters()):
        raise ValueError(
            f"{model_dir} has LoRA weights inside the model; call `merge_and_unload()` before saving, then export."
        )
    return model.eval()


def _export_graphs(model, onnx_dir: Path, opset: int, progress) -> None:
    steps = (
        ("vision_encoder", graphs.export_vision_encoder),
        ("embed_tokens", graphs.export_embed_tokens),
        ("decoder_model_merged", graphs.export_decoder),
    )
    for name, export in steps:
        progress.set_description(f"export {name}")
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


def _write_variant(onnx_dir: Path, dtype: str) -> None:
    """fp16: every float tensor to half (inputs and cache included, for CUDA). int8: dynamic quantization."""
    import onnx

    for graph in GRAPH_NAMES:
        source, target = onnx_dir / f"{graph}.onnx", onnx_dir / f"{graph}{SUFFIXES[dtype]}.onnx"
        large = source.stat().st_size > 1_800_000_000 or any(onnx_dir.glob(f"{graph}.onnx*data"))
        if dtype == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            half = convert_float_to_float16(onnx.load(str(source)), keep_io_types=False)
            onnx.save(half, str(target), save_as_external_data=large, location=f"{target.name}_data")
        else:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            root = logging.getLogger()
            level = root.level
            # quantize_dynamic logs a "run pre-processing" hint per file on the root logger
            root.setLevel(logging.ERROR)
            try:
                quantize_dynamic(
                    str(source), str(target), weight_type=QuantType.QInt8,
                    op_types_to_quantize=["MatMul", "Gemm", "Gather"], use_external_data_format=large,
                )
            finally:
                root.setLevel(level)


def _copy_side_files(model_dir: Path, out_dir: Path, model) -> None:
    """Config, generation config, tokenizer / processor / chat template and modeling files; no weights."""
    for path in model_dir.iterdir():
        if path.is_file() and not path.name.endswith(_WEIGHT_SUFFIXES) and path.name not in _WEIGHT_INDEXES:
            shutil.copy2(path, out_dir / path.name)
    if not (out_dir / "generation_config.json").is_file():
        model.generation_config.save_pretrained(out_dir)
    # The folder holds no PyTorch weights; `ORTLlavaForConditionalGeneration` reads it back with hf-llava's
    # `LlavaConfig` whatever `model_type` says, and transformers.js needs `llava` to load it.
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["model_type"] = TRANSFORMERS_JS_MODEL_TYPE
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _validation_inputs(config, seed: int = 0) -> dict:
    """A left-padded batch of 2 prompts, each with one image: `input_ids`, `attention_mask`, `pixel_values`."""
    generator = torch.Generator().manual_seed(seed)
    special = {config.image_token_id, config.text_config.eos_token_id, config.text_config.pad_token_id}
    vocab = [i for i in range(4, config.text_config.vocab_size) if i not in special]
    n_image, pad = config.num_image_tokens, config.text_config.pad_token_id or 0
    rows = []
    for n_text in (6, 3):
        text = [vocab[int(i)] for i in torch.randint(len(vocab), (n_text,), generator=generator)]
        rows.append(text[:2] + [config.image_token_id] * n_image + text[2:])
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    size = config.vision_config.image_size
    pixel_values = torch.randn(2, 3, size, size, generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}


def validate_export(
    model, export_dir: Union[str, Path], dtype: str = "fp32", device: str = "cpu", max_new_tokens: int = 8
) -> dict:
    """Compare the exported graphs with `model` (PyTorch, fp32) on a left-padded batch of 2 image prompts.

    Returns `{provider, dtype, max_abs_diff, relative_diff, tolerance, tokens_match}`; raises
    `ExportValidationError` when fp32 greedy tokens differ or the first-step logits exceed `TOLERANCES[dtype]`.
    """
    from .modeling_ort import ORTLlavaForConditionalGeneration

    ort_model = ORTLlavaForConditionalGeneration.from_pretrained(export_dir, provider=PROVIDERS[device], dtype=dtype)
    inputs = _validation_inputs(model.config)
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
        raise ExportValidationError(
            f"{dtype} export: the graphs produce non-finite logits (NaN or inf): "
            "the variant is unusable (fp16 overflow?). Use --dtype fp32."
        )
    if dtype == "fp32" and not report["tokens_match"]:
        raise ExportValidationError(
            f"fp32 export: greedy tokens differ from PyTorch (torch {torch_tokens.tolist()}, onnx "
            f"{ort_tokens.tolist()}; first-step max abs diff {diff:.3g}). The graph is wrong; please report it."
        )
    if not report["relative_diff"] <= TOLERANCES[dtype]:
        raise ExportValidationError(
            f"{dtype} export: first-step logits differ from PyTorch by {diff:.3g} (relative {diff / scale:.3g}), "
            f"above the {dtype} tolerance {TOLERANCES[dtype]} (relative to max(1, max |logits|)). "
            "Use --dtype fp32, or --no-validate to keep it anyway."
        )
    return report


def export_onnx(
    model_dir: Union[str, Path],
    out_dir: Union[str, Path],
    dtype: str = "fp32",
    device: str = "cpu",
    opset: int = 17,
    validate: bool = True,
    show_progress: bool = True,
) -> Path:
    """Export the hf-llava model saved in `model_dir` to `out_dir` (see the module docstring for the layout).

    `dtype`: `fp32` (always written, the reference), `fp16` (for CUDA, suffix `_fp16`) or `int8` (dynamic
    quantization, suffix `_quantized`) written beside it. `device`: the execution provider validation runs
    on. Returns `out_dir`. Nothing is written to `out_dir` until every step, validation included, succeeded.
    """
    model_dir, out_dir = Path(model_dir).resolve(), Path(out_dir).resolve()
    _check_arguments(model_dir, out_dir, dtype, device)
    total = 6 + (dtype != "fp32") + bool(validate)  # load, 3 graphs, side files, move (+ variant, + validation)
    with tqdm(total=total, desc="load model", disable=not show_progress) as progress:
        with atomic_folder(out_dir) as tmp_dir:  # nothing appears at out_dir unless every step succeeds
            model = _load_model(model_dir)
            progress.update(1)
            onnx_dir = tmp_dir / "onnx"
            onnx_dir.mkdir()
            _export_graphs(model, onnx_dir, opset, progress)
            if dtype != "fp32":
                progress.set_description(f"write {dtype} variant")
                _write_variant(onnx_dir, dtype)
                progress.update(1)
            progress.set_description("copy config and processor")
            _copy_side_files(model_dir, tmp_dir, model)
            info = {"dtype": dtype, "opset": opset, "files": [onnx_file(dtype, g) for g in GRAPH_NAMES]}
            (onnx_dir / "export_info.json").write_text(json.dumps(info, indent=2) + "\n")
            progress.update(1)
            if validate:
                progress.set_description(f"validate on {device}")
                info["validation"] = validate_export(model, tmp_dir, dtype, device)
                (onnx_dir / "export_info.json").write_text(json.dumps(info, indent=2) + "\n")
                progress.update(1)
            progress.set_description("move into place")
        progress.update(1)
    if validate:
        report = info["validation"]
        print(
            f"validation ({dtype}, provider {report['provider']}): "
            f"first-step max abs diff {report['max_abs_diff']:.3g} "
            f"(relative {report['relative_diff']:.3g}, tolerance {report['tolerance']}), greedy tokens "
            f"{'match' if report['tokens_match'] else 'differ'}"
        )
        if "warning" in report:
            print(f"warning: {report['warning']}")
    return out_dir
