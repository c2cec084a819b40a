"""`hf-llava export-onnx MODEL_DIR OUT_DIR`: argument parsing for `hf_llava.onnx.export_onnx`.

Imports only `layout.py` at import time (no torch, transformers or ONNX Runtime): `--help` answers at
once, also where the `[onnx]` extra is not installed.
"""

import argparse

from .layout import DTYPES, OPTIMIZE_LEVELS, PROVIDERS


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Declare the `export-onnx` arguments on `parser` (a sub-parser of `hf-llava`)."""
    parser.add_argument("model_dir", metavar="MODEL_DIR",
                        help="folder written by save_pretrained (model + processor), or a LoRA adapter "
                             "with --merge-adapter")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write; it must not exist or be empty "
                        "(see --overwrite), and it appears only once the export is complete and validated")
    parser.add_argument("--processor", metavar="DIR", default=None,
                        help="folder with the processor files (tokenizer, image processor) to ship, for a "
                             "MODEL_DIR without them (default: MODEL_DIR's own, or a LoRA adapter's base model's)")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32",
                        help="variant written beside fp32: fp16 (for CUDA), int8 (dynamic quantization) or int4 "
                             "(weight-only 4-bit MatMulNBits, block 32) (default: fp32 alone)")
    parser.add_argument("--optimize", choices=OPTIMIZE_LEVELS, default="auto",
                        help="the decoder graph: gqa = onnxruntime-genai's model builder (GroupQueryAttention, KV "
                             "cache written in place; Llama / Mistral / Qwen2 LMs, transformers 5.x), none = traced "
                             "from PyTorch (what transformers.js runs), auto = gqa where possible (default: auto)")
    parser.add_argument("--device", choices=tuple(PROVIDERS), default="cpu",
                        help="where ONNX Runtime runs the validation (cuda needs the [gpu] extra)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version of the graphs")
    parser.add_argument("--no-validate", dest="validate", action="store_false",
                        help="skip the comparison with PyTorch after export")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing non-empty OUT_DIR (only once the new export is complete)")
    parser.add_argument("--merge-adapter", action="store_true",
                        help="MODEL_DIR is a LoRA adapter: merge it into its base model (base_model_name_or_path) "
                             "and export the result")


def run(args: argparse.Namespace) -> int:
    """Run the export; returns 0 (errors raise with a message saying what to do)."""
    from .export import export_onnx

    out = export_onnx(args.model_dir, args.out_dir, dtype=args.dtype, device=args.device, opset=args.opset,
                      validate=args.validate, processor=args.processor, overwrite=args.overwrite,
                      merge_adapter=args.merge_adapter, optimize=args.optimize)
    print(f"ONNX export written to {out}")
    return 0
