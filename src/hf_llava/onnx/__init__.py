"""ONNX export of hf-llava models (three graphs, transformers.js layout) and generation on ONNX Runtime.

`export_onnx(MODEL_DIR, OUT_DIR, dtype=..., device=...)` writes and validates the folder;
`ORTLlavaForConditionalGeneration.from_pretrained(OUT_DIR, provider=...)` generates from it.
Needs the `[onnx]` (CPU) or `[gpu]` extra. The names are imported on first use: importing this package
(or its `cli.py`) imports neither torch, transformers nor ONNX Runtime.
"""

from .._lazy import lazy_names

__getattr__, __dir__ = lazy_names(__name__, {
    "DTYPES": ".layout",
    "TOLERANCES": ".layout",
    "ExportValidationError": ".export",
    "export_onnx": ".export",
    "validate_export": ".export",
    "ORTLlavaForConditionalGeneration": ".modeling_ort",
})

__all__ = [
    "DTYPES",
    "ExportValidationError",
    "ORTLlavaForConditionalGeneration",
    "TOLERANCES",
    "export_onnx",
    "validate_export",
]
