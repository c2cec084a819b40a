"""The exported folder's layout: dtypes, file names, graph input/output names, providers, tolerances.

Owns the facts that the exporter (`export.py`, `graphs.py`), the runtime (`modeling_ort.py`) and the
CLI (`cli.py`) share. It imports nothing heavy (no torch, transformers or ONNX Runtime), so that
`hf-llava export-onnx --help` answers at once and works without the `[onnx]` extra.
"""

# Most precise first: `ORTLlavaForConditionalGeneration.from_pretrained(dtype="auto")` takes the first present.
DTYPES = ("fp32", "fp16", "int8", "int4")
# int4: weight-only 4-bit MatMulNBits (transformers.js calls this variant `q4`).
SUFFIXES = {"fp32": "", "fp16": "_fp16", "int8": "_quantized", "int4": "_q4"}
GRAPH_NAMES = ("vision_encoder", "embed_tokens", "decoder_model_merged")
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# Max |logits_ort - logits_torch| on the first step, relative to max(1, max |logits_torch|).
TOLERANCES = {"fp32": 1e-3, "fp16": 5e-2, "int8": 0.15, "int4": 0.5}
EXPORT_INFO = "onnx/export_info.json"
# The decoder's scalar int64 input: logits for the last N positions only, 0 for all (transformers' `logits_to_keep`;
# transformers.js feeds it when a graph has it: 1 while generating, 0 otherwise).
NUM_LOGITS_TO_KEEP = "num_logits_to_keep"
# How the decoder graph is made (`export_onnx(optimize=...)`): `gqa` by onnxruntime-genai's model builder
# (GroupQueryAttention over a KV buffer written in place, fused rotary embedding and norms), `none` traced from
# PyTorch (the layout transformers.js runs), `auto` the first of them that this LM and install allow.
OPTIMIZE_LEVELS = ("auto", "gqa", "none")
# AnyRes `spatial_unpad`: the vision graph's second output, the learned vector closing each row of tile features.
IMAGE_NEWLINE = "image_newline"


def onnx_file(dtype: str, graph: str) -> str:
    """`onnx/<graph><suffix>.onnx` for `dtype` in fp32 / fp16 / int8."""
    return f"onnx/{graph}{SUFFIXES[dtype]}.onnx"


def extra_for(device_or_provider: str) -> str:
    """The pip extra that provides ONNX Runtime for `cpu` / `cuda` (or a provider name): `onnx` or `gpu`."""
    return "gpu" if device_or_provider in ("cuda", PROVIDERS["cuda"]) else "onnx"


def past_names(num_layers: int) -> list[str]:
    """`past_key_values.{i}.key`, `past_key_values.{i}.value` for every layer, in order (decoder inputs)."""
    return [f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    """`present.{i}.key`, `present.{i}.value` for every layer, in order (decoder outputs)."""
    return [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def kv_shape(text_config) -> tuple[int, int]:
    """`(num_key_value_heads, head_dim)` of the LM's cache."""
    heads = getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    return heads, head_dim
