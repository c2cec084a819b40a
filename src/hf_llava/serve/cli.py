"""`hf-llava serve [MODEL_DIR]`: the OpenAI-compatible API and the chat page over one model.

Imports nothing heavy at import time: `--help` answers at once, also where the `[serve]` extra is not installed.
"""

import argparse
import sys
from pathlib import Path
from typing import Optional

from .._cli_args import add_quantization_arguments, quantization_config
from .._extras import require


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL_DIR, --backend, --device: what `serve` and `chat` load."""
    parser.add_argument("model_dir", metavar="MODEL_DIR", nargs="?", default=None,
                        help="an hf-llava folder, a llava-hf folder converted with `hf-llava convert`, or an "
                             "`hf-llava export-onnx` folder (then --backend onnx is implied); default: the demo's "
                             "trained model, shipped with the package")
    parser.add_argument("--backend", choices=("torch", "onnx"), default=None,
                        help="PyTorch or ONNX Runtime (default: onnx for an export folder, else torch)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="where the model runs (default: cuda when available for torch, cpu for onnx)")
    add_quantization_arguments(parser)


def load(model_dir: Optional[str], backend: Optional[str], device: Optional[str], quantization=None) -> tuple:
    """(model, processor, the folder) for MODEL_DIR (default: the shipped demo model), in 4 / 8 bits with
    `quantization` (a `BitsAndBytesConfig`); errors name the flag."""
    from ..onnx.loading import is_onnx_folder, load_model

    if model_dir is None:
        from ..world.parts import chat_model_path

        model_dir = chat_model_path()
    path = Path(model_dir)
    onnx = is_onnx_folder(path)
    if backend == "onnx" and not onnx and path.is_dir():
        raise ValueError(f"--backend onnx: {path} is not an `hf-llava export-onnx` folder (no onnx/export_info.json); "
                         f"export it first: hf-llava export-onnx {path} {path}-onnx")
    if backend == "torch" and onnx:
        raise ValueError(f"--backend torch: {path} is an ONNX export folder; pass the PyTorch folder it was exported "
                         "from, or --backend onnx.")
    if quantization is not None:
        if onnx or backend == "onnx":
            raise ValueError(f"--load-in quantises PyTorch weights (bitsandbytes), but {path} is served with ONNX "
                             "Runtime: pass the PyTorch folder with --backend torch, or drop --load-in.")
    model, processor = load_model(path, device=device, quantization_config=quantization)
    return model, processor, path


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Declare the `serve` arguments on `parser` (a sub-parser of `hf-llava`)."""
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (0.0.0.0 exposes the server: set --api-key then)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument("--served-model-name", metavar="NAME", default=None,
                        help="the model name clients send and /v1/models lists (default: MODEL_DIR's folder name)")
    parser.add_argument("--max-batch-size", type=int, default=8,
                        help="requests answered together in one batch")
    parser.add_argument("--gather-ms", type=float, default=20.0,
                        help="how long a batch waits for another request to join it, in milliseconds (at most 4 such "
                             "waits; a lone request waits one)")
    parser.add_argument("--ui", action=argparse.BooleanOptionalAction, default=True,
                        help="the chat page at / (Gradio)")
    parser.add_argument("--api-key", default=None,
                        help="require 'Authorization: Bearer KEY' on /v1 (default: none)")
    parser.add_argument("--max-image-pixels", type=int, default=4096 * 4096,
                        help="largest image accepted, in pixels (width x height)")
    parser.add_argument("--max-body-bytes", type=int, default=32 * 1024 * 1024,
                        help="largest request body accepted, in bytes")
    parser.add_argument("--allow-remote-images", action="store_true",
                        help="fetch http(s) image URLs (off: a server that fetches any URL can be turned against "
                             "its own network)")
    parser.add_argument("--allow-local-images", action="store_true",
                        help="read image paths and file:// URLs on the server's disk")


def build_service(model, processor, name: str, max_batch_size: int = 8, gather_ms: float = 20.0,
                  policy=None):
    from .app import ChatService
    from .engine import Engine
    from .messages import ImagePolicy

    engine = Engine(model, processor, max_batch_size=max_batch_size, gather_seconds=gather_ms / 1000)
    return ChatService(model, processor, name, engine, policy or ImagePolicy())


def run(args: argparse.Namespace) -> int:
    """Load the model and serve until interrupted."""
    for flag, value in (("--max-batch-size", args.max_batch_size), ("--max-image-pixels", args.max_image_pixels),
                        ("--max-body-bytes", args.max_body_bytes)):
        if value < 1:
            raise ValueError(f"{flag}: expected a positive number.")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: expected 0-65535 (0: any free port).")
    require("fastapi", "serve", "hf-llava serve")
    require("uvicorn", "serve", "hf-llava serve")
    if args.ui:
        require("gradio", "serve", "the chat page (--ui)")
    from .app import build_app
    from .messages import ImagePolicy

    model, processor, path = load(args.model_dir, args.backend, args.device, quantization_config(args, args.device))
    name = args.served_model_name or path.name
    policy = ImagePolicy(max_pixels=args.max_image_pixels, allow_remote=args.allow_remote_images,
                         allow_local=args.allow_local_images)
    service = build_service(model, processor, name, args.max_batch_size, args.gather_ms, policy)
    app = build_app(service, api_key=args.api_key, max_body_bytes=args.max_body_bytes, ui=args.ui)
    if args.host not in ("127.0.0.1", "localhost", "::1") and args.api_key is None:
        print(f"hf-llava serve: warning: listening on {args.host} without --api-key: anyone who reaches it can use "
              "it", file=sys.stderr)
    page = " and the chat page at /" if args.ui else ""
    print(f"hf-llava serve: {name} on http://{args.host}:{args.port} (OpenAI API at /v1{page}); Ctrl+C stops it",
          flush=True)
    import uvicorn

    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:  # let the engine's thread end its batch before Python ends
        service.engine.close()
    return 0
