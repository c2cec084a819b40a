"""Optional dependencies: importing one that is missing names the extra that installs it."""

import importlib
from types import ModuleType

# extra -> what it is for; `pip install 'hf-llava[EXTRA]'` installs it.
EXTRAS = {
    "train": "training (hf-llava train, the demo, LoRA adapters): TRL, PEFT, datasets, accelerate",
    "teacher": "a teacher or judge on an OpenAI-compatible server (datagen --base-url, eval llava-bench): openai",
    "onnx": "ONNX export and ONNX Runtime inference on CPU ('hf-llava[gpu]' for CUDA instead)",
    "gpu": "ONNX Runtime inference on CUDA",
    "serve": "hf-llava serve / chat: FastAPI, uvicorn, sse-starlette, httpx, Gradio",
    "quant": "4-bit / 8-bit loading and QLoRA training (--load-in): bitsandbytes",
    "test": "the test suite",
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import `module`, or raise `MissingExtraError` saying that `feature` needs `pip install 'hf-llava[extra]'`."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(
            f"{feature} needs the {module!r} package, which is not installed ({error}); "
            f"install it with: pip install 'hf-llava[{extra}]'  ({EXTRAS[extra]})."
        ) from error


__all__ = ["EXTRAS", "MissingExtraError", "require"]
