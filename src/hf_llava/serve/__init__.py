"""`hf-llava serve` and `hf-llava chat`: an OpenAI-compatible API (FastAPI) with a chat page (Gradio) over one
model, requests batched by one engine. Needs the `[serve]` extra (FastAPI, uvicorn, sse-starlette, Gradio).
"""

from .._lazy import lazy_names

__getattr__, __dir__ = lazy_names(__name__, {
    "ChatService": ".app",
    "Engine": ".engine",
    "ImagePolicy": ".messages",
    "build_app": ".app",
    "running": ".app",
})

__all__ = ["ChatService", "Engine", "ImagePolicy", "build_app", "running"]
