"""The chat page of `hf-llava serve` (Gradio), mounted at `/` on the API's FastAPI app.

A multimodal `gr.ChatInterface`: attach images, ask, and the answer streams in as it is generated; stop, retry,
undo and clear; temperature, top-p and max tokens; a few example pictures with a question each. A turn runs the
code the API runs: the chat's history becomes the chat template's messages and images (read with the API's checks),
`ChatService.prepare` renders and checks them (a refusal shows the API's message), and `service.engine.stream`
answers, so the page's turns share batches with the API's requests. Gradio's handler threads only wait on the
engine's events; the engine's worker thread alone runs the model. The page needs nothing from outside the server:
Gradio's analytics are off, there is no share link, and the theme's fonts are served locally.
"""

import dataclasses
import hmac
import os
import tempfile
from contextlib import closing
from pathlib import Path
from typing import Optional

from .app import ChatService
from .engine import Sampling
from .messages import APIError, load_image_url

MAX_TOKENS = 512  # the page's default answer length
EXAMPLES = 3  # example pictures in the empty chat
EXAMPLE_FILE = "hf-llava-example-{}.png"
# the example pictures (the world's are 64 pixels square) are shown enlarged, their pixels sharp
CSS = """
img[src*="hf-llava-example-"] { image-rendering: pixelated; }
.message img[src*="hf-llava-example-"] { object-fit: contain; width: 160px; height: 160px; }
"""


def history_to_conversation(history: list, message: dict, service: ChatService) -> tuple[list, list]:
    """Gradio's chat `history` (messages whose content is a list of `{"type": "text"}` and `{"type": "file"}`
    parts) and the new multimodal `message` (`{"text", "files"}`) -> (the chat template's messages, their images).

    A turn's images come before its text (as `hf-llava chat` sends them); consecutive messages of one role merge (a
    turn that failed leaves its question unanswered). Images are read as the API reads them (size limits, a clear
    refusal for a file that is not an image); uploads are files in Gradio's cache."""
    policy = dataclasses.replace(service.policy, allow_local=True)
    turns = [(m["role"], m["content"]) for m in history]
    turns.append(("user", [{"type": "file", "file": {"path": path}} for path in message.get("files") or []]
                  + [{"type": "text", "text": message.get("text") or ""}]))
    conversation, images = [], []
    for role, content in turns:
        parts = []
        for part in [{"type": "text", "text": content}] if isinstance(content, str) else content:
            if part.get("type") == "file" and role == "user":
                path = part["file"]["path"]
                images.append(load_image_url(path, f"image {Path(path).name!r}", policy))
                parts.append({"type": "image"})
            elif part.get("type") == "text" and part["text"].strip():
                parts.append({"type": "text", "text": part["text"]})
        parts.sort(key=lambda part: part["type"] != "image")  # stable: images first, each kind in its order
        if conversation and conversation[-1]["role"] == role:
            conversation[-1]["content"].extend(parts)
        elif parts:
            conversation.append({"role": role, "content": parts})
    return conversation, images


def build_ui(service: ChatService, examples: Optional[list] = None):
    """The page, a `gr.ChatInterface` (not mounted yet). `examples`: `(PIL image, question)` pairs shown in the
    empty chat; default: the world's held-out example pictures where the shipped chat model is installed."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read when Gradio starts
    import gradio as gr

    def respond(message: dict, history: list, temperature: float, top_p: float, max_tokens: float):
        conversation, images = _shown(history_to_conversation, history, message, service)
        if not conversation or conversation[-1]["role"] != "user":
            raise gr.Error("Type a question or attach an image first.")
        prepared = _shown(service.prepare, conversation, images, None)  # None: the room the context has left
        if service.engine.context_length is not None:  # a long chat gets the room left, not a refusal
            max_tokens = min(int(max_tokens), prepared.max_tokens)
        sampling = Sampling(temperature=float(temperature), top_p=float(top_p))
        answer = ""
        with closing(service.engine.stream(prepared.features, int(max_tokens), sampling)) as events:
            for event in events:  # stopped early (the stop button, a closed tab): the request is cancelled
                if event.error is not None:
                    raise gr.Error(f"Generation failed: {event.error}")
                if event.delta:
                    answer += event.delta
                    yield _verbatim(answer)
        if not answer:  # the model ended its turn at once
            yield _verbatim(answer)

    if examples is None:
        examples = world_examples()
    context = service.engine.context_length or 4096
    with tempfile.TemporaryDirectory(prefix="hf-llava-examples-") as folder:  # Gradio copies them to its cache
        shown = []
        for i, (image, question) in enumerate(examples):
            path = Path(folder) / EXAMPLE_FILE.format(i + 1)
            image.save(path)
            shown.append([{"text": question, "files": [str(path)]}])
        return gr.ChatInterface(
            respond,
            multimodal=True,
            textbox=gr.MultimodalTextbox(file_types=["image"], file_count="multiple", sources=["upload"],
                                         placeholder="Ask about an image: attach it with the clip or drop it here",
                                         show_label=False, submit_btn=True, stop_btn=True),
            chatbot=gr.Chatbot(label=service.name, scale=1, min_height=360, buttons=["copy"]),
            additional_inputs=[
                gr.Slider(0.0, 2.0, value=Sampling.temperature, step=0.05, label="Temperature (0: greedy)",
                          elem_id="temperature"),
                gr.Slider(0.05, 1.0, value=Sampling.top_p, step=0.05, label="Top-p", elem_id="top-p"),
                gr.Slider(1, context, value=min(MAX_TOKENS, context), step=1, label="Max tokens",
                          elem_id="max-tokens"),
            ],
            additional_inputs_accordion=gr.Accordion("Sampling", open=False),
            examples=shown or None,
            cache_examples=False,
            title="hf-llava",
            description=f"Chat with **{service.name}** about images. The same model answers the OpenAI-compatible "
                        "API at `/v1` (reference at `/api-docs`).",
            analytics_enabled=False,
            concurrency_limit=service.engine.max_batch_size,  # the page's turns share the engine's batches
        )


def _verbatim(text: str) -> dict:
    """An answer as a typed message part, which the chat shows as the model wrote it (a plain string would pass
    through `inspect.cleandoc`: tabs expanded, indentation and leading blank lines dropped)."""
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def _shown(function, *args):
    """`function(*args)`; an `APIError` (a refused image or prompt) shows its message on the page."""
    import gradio as gr

    try:
        return function(*args)
    except APIError as error:
        raise gr.Error(error.message) from error


def world_examples() -> list:
    """The world's held-out example pictures and questions, where the shipped chat model is installed (they come
    with its training settings); else none."""
    from ..world.parts import chat_model_path, example_images

    if not any(Path(chat_model_path()).glob("*.safetensors")):
        return []
    return [(example.image, example.question) for example in example_images(EXAMPLES)]


def mount_ui(app, service: ChatService, examples: Optional[list] = None, api_key: Optional[str] = None):
    """Mount the chat page at `/` on the FastAPI `app` (the API's routes keep precedence) and return the app.
    `api_key`: the page asks for it (as the password, any user name) before it chats."""
    import gradio as gr

    auth = None if api_key is None else (
        lambda username, password: hmac.compare_digest(password.encode(), api_key.encode()))
    return gr.mount_gradio_app(app, build_ui(service, examples), path="/", footer_links=["gradio", "settings"],
                               ssr_mode=False, max_file_size=service.policy.max_bytes, auth=auth,
                               auth_message="Enter the server's API key as the password." if auth else None,
                               css=CSS)


__all__ = ["build_ui", "history_to_conversation", "mount_ui", "world_examples"]
