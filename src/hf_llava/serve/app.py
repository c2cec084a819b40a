"""The OpenAI-compatible API of `hf-llava serve` (FastAPI; vLLM's conventions) over one `ChatService`.

`POST /v1/chat/completions` (streaming as Server-Sent Events `chat.completion.chunk`s, then `data: [DONE]`),
`GET /v1/models`, `GET /health`. Every refused request gets OpenAI's error body
(`{"error": {"message", "type", "param", "code"}}`) with a 4xx status naming the problem; the server goes on.
`ChatService` is what the API and the chat page share: rendering, checks, and the batching `Engine`.
"""

import asyncio
import json
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

from .engine import Engine, Event, Request, Sampling
from .messages import APIError, ImagePolicy, to_conversation

MAX_STOP_SEQUENCES = 4  # as OpenAI


@dataclass
class Prepared:
    """A checked prompt: the processor's output for it and the completion budget."""

    features: dict
    max_tokens: int


class ChatService:
    """The model behind the API and the chat page: `name` (what `/v1/models` lists), the processor, the engine."""

    def __init__(self, model, processor, name: str, engine: Engine, policy: Optional[ImagePolicy] = None):
        self.model, self.processor, self.name, self.engine = model, processor, name, engine
        self.policy = policy or ImagePolicy()

    def prepare(self, conversation: list, images: list, max_tokens: Optional[int]) -> Prepared:
        """Render `conversation` with the model's chat template and process it with `images`; refusals name the
        problem (images the template does not place, a prompt past the context)."""
        try:
            prompt = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        except Exception as error:  # the template's own complaint (e.g. roles out of order)
            raise APIError(f"messages: the chat template could not render them ({error}).", param="messages") from error
        placed = prompt.count(self.processor.image_token)
        if placed != len(images):
            raise APIError(f"messages: {len(images)} image(s) sent but the chat template places {placed}; send one "
                           "image part per image, in user messages.", param="messages")
        try:
            features = dict(self.processor(images=images or None, text=prompt))
        except ValueError as error:
            raise APIError(f"messages: {error}", param="messages") from error
        features = {k: v[0] if k in ("input_ids", "attention_mask") else v for k, v in features.items()}
        prompt_tokens = len(features["input_ids"])
        context = self.engine.context_length
        if context is not None:
            room = context - prompt_tokens
            if max_tokens is None:
                max_tokens = max(room, 1)
            if prompt_tokens + max_tokens > context:
                raise APIError(f"This model's maximum context length is {context} tokens. However, you requested "
                               f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} "
                               "in the completion). Reduce the length of the messages or the completion.",
                               param="messages")
        return Prepared(features, max_tokens if max_tokens is not None else 256)


def _number(body: dict, name: str, low: float, high: float, default, integer: bool = False):
    value = body.get(name, default)
    if value is None:
        return default
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        raise APIError(f"{name}={value!r}: expected {'an integer' if integer else 'a number'} in [{low}, {high}].",
                       param=name)
    return value


def parse_request(body, served_name: str) -> dict:
    """The fields of a chat completion request, checked; refusals name the field."""
    if not isinstance(body, dict):
        raise APIError("The request body must be a JSON object.")
    model = body.get("model")
    if model is not None and model != served_name:
        raise APIError(f"The model `{model}` does not exist; this server serves `{served_name}` (GET /v1/models).",
                       status=404, param="model", type="invalid_request_error")
    if _number(body, "n", 1, 1, 1, integer=True) != 1:
        raise APIError("n: only n=1 is supported.", param="n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise APIError(f"{name}={max_tokens!r}: expected a positive integer.", param=name)
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) and s for s in stop):
        raise APIError(f"stop: expected a string or a list of at most {MAX_STOP_SEQUENCES} non-empty strings.",
                       param="stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError("stream: expected true or false.", param="stream")
    options = body.get("stream_options") or {}
    return {
        "messages": body.get("messages"),
        "max_tokens": max_tokens,
        "sampling": Sampling(temperature=float(_number(body, "temperature", 0, 2, 1.0)),
                             top_p=float(_number(body, "top_p", 1e-9, 1, 1.0)),
                             seed=_number(body, "seed", -2**63, 2**63 - 1, None, integer=True)),
        "stop": tuple(stop),
        "stream": stream,
        "include_usage": bool(isinstance(options, dict) and options.get("include_usage")),
    }


def build_app(service: ChatService, api_key: Optional[str] = None, max_body_bytes: int = 32 * 1024 * 1024,
              ui: bool = False):
    """The FastAPI app: the API routes, and with `ui` the chat page mounted at `/`."""
    from fastapi import FastAPI, Request as HTTPRequest
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from sse_starlette import EventSourceResponse
    from starlette.exceptions import HTTPException

    app = FastAPI(title="hf-llava", docs_url="/docs" if not ui else "/api-docs")
    started = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(request, error: APIError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, error):
        return JSONResponse(APIError(f"Invalid request: {error}").body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http_error(request, error):
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return JSONResponse(APIError(str(error.detail), error.status_code, type=kind).body(),
                            status_code=error.status_code)

    def check_key(request) -> None:
        if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
            raise APIError("Incorrect or missing API key: send 'Authorization: Bearer <key>'.", status=401,
                           type="authentication_error")

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: HTTPRequest):
        check_key(request)
        return {"object": "list", "data": [{"id": service.name, "object": "model", "created": started,
                                            "owned_by": "hf-llava"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HTTPRequest):
        check_key(request)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise APIError(f"The request body ({declared} bytes) is larger than this server's limit of "
                           f"{max_body_bytes} bytes (--max-body-bytes).", status=413)
        raw = await request.body()
        if len(raw) > max_body_bytes:
            raise APIError(f"The request body is larger than this server's limit of {max_body_bytes} bytes.",
                           status=413)
        try:
            body = json.loads(raw)
        except ValueError as error:
            raise APIError(f"The request body is not valid JSON ({error}).") from error
        fields = parse_request(body, service.name)
        # decoding and processing images is CPU work: off the event loop
        prepared = await asyncio.to_thread(_prepare, service, fields)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job = Request(prepared.features, prepared.max_tokens, fields["sampling"],
                      lambda event: loop.call_soon_threadsafe(events.put_nowait, event), fields["stop"])
        service.engine.submit(job)
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def usage() -> dict:
            return {"prompt_tokens": job.prompt_tokens, "completion_tokens": len(job.tokens),
                    "total_tokens": job.prompt_tokens + len(job.tokens)}

        def chunk(delta: dict, finish_reason=None) -> str:
            return json.dumps({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                               "model": service.name, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                                   "finish_reason": finish_reason}]})

        if not fields["stream"]:
            try:
                text, event = [], Event()
                while event.finish_reason is None:
                    event = await events.get()
                    if event.error is not None:
                        raise event.error
                    text.append(event.delta)
            finally:
                job.cancel()
            return {"id": completion_id, "object": "chat.completion", "created": created, "model": service.name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(text)},
                                 "logprobs": None, "finish_reason": event.finish_reason}],
                    "usage": usage()}

        async def stream():
            try:
                yield chunk({"role": "assistant", "content": ""})
                while True:
                    event = await events.get()
                    if event.error is not None:
                        yield json.dumps(APIError(f"Generation failed: {event.error}", 500, type="server_error")
                                         .body())
                        break
                    if event.delta:
                        yield chunk({"content": event.delta})
                    if event.finish_reason is not None:
                        yield chunk({}, event.finish_reason)
                        if fields["include_usage"]:
                            yield json.dumps({"id": completion_id, "object": "chat.completion.chunk",
                                              "created": created, "model": service.name, "choices": [],
                                              "usage": usage()})
                        break
                yield "[DONE]"
            finally:
                job.cancel()  # a client that went away frees its row at the next step

        return EventSourceResponse(stream(), ping=15)

    if ui:
        from .ui import mount_ui

        app = mount_ui(app, service, api_key=api_key)
    return app


def _prepare(service: ChatService, fields: dict) -> Prepared:
    conversation, images = to_conversation(fields["messages"], service.policy)
    return service.prepare(conversation, images, fields["max_tokens"])


@contextmanager
def running(app, host: str = "127.0.0.1", port: int = 0):
    """Serve `app` with uvicorn on a thread; yields the base URL (`port=0`: a free port) and stops on exit."""
    import socket

    import uvicorn

    if port == 0:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"The server did not start on {host}:{port}.")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


__all__ = ["ChatService", "Prepared", "build_app", "parse_request", "running"]
