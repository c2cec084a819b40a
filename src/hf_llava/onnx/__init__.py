"""ONNX export of hf-llava models (three graphs, transformers.js layout) and generation on ONNX Runtime.

`export_onnx(MODEL_DIR, OUT_DIR, dtype=..., device=...)` writes and validates the folder;
`ORTLlavaForConditionalGeneration.from_pretrained(OUT_DIR, provider=...)` generates from it.
Needs the `[onnx]` (CPU) or `[gpu]` extra.
"""

from .export import DTYPES, TOLERANCES, ExportValidationError, export_onnx, validate_export
from .modeling_ort import ORTLlavaForConditionalGeneration

__all__ = [
    "DTYPES",
    "ExportValidationError",
    "ORTLlavaForConditionalGeneration",
    "TOLERANCES",
    "export_onnx",
    "validate_export",
]
