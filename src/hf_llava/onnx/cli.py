"""`hf-llava export-onnx MODEL_DIR OUT_DIR`: argument parsing for `hf_llava.onnx.export_onnx`."""

import argparse

from .export import DTYPES, PROVIDERS


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Declare the `export-onnx` arguments on `parser` (a sub-parser of `hf-llava`)."""
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="folder written by save_pretrained (model + processor)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (replaced atomically if it is an export)")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32",
                        help="variant written beside fp32: fp16 (for CUDA) or int8 (dynamic quantization)")
    parser.add_argument("--device", choices=tuple(PROVIDERS), default="cpu", help="execution provider for validation")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--no-validate", dest="validate", action="store_false",
                        help="skip the comparison with PyTorch after export")


def run(args: argparse.Namespace) -> int:
    """Run the export; returns 0 (errors raise with a message saying what to do)."""
    from .export import export_onnx

    out = export_onnx(args.model_dir, args.out_dir, dtype=args.dtype, device=args.device, opset=args.opset,
                      validate=args.validate)
    print(f"ONNX export written to {out}")
    return 0
