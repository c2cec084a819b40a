"""The generation engine of `hf-llava serve` and `hf-llava chat`: one model, one worker thread, batched requests.

Requests arrive from any thread (the API's event loop, Gradio's handlers, the terminal chat) already rendered and
processed (`Request`); the worker gathers up to `max_batch_size` of them (until none has joined for `gather_seconds`,
so that clients coming back one after another from the last batch share the next one), groups those that sample
alike (greedy, or the same temperature / top-p; a seeded request runs alone, so its seed decides its tokens),
left-pads each group into one batch and runs `model.generate` on it: PyTorch's `LlavaForConditionalGeneration` or
ONNX Runtime's `ORTLlavaForConditionalGeneration`, which take the same `streamer` and `stopping_criteria`.

Each step's tokens reach their requests through a transformers `BaseStreamer`; a request decodes its own tokens,
holds back text that may be the start of a stop string, and finishes on the end-of-turn token (`stop`), a stop
string (`stop`), its own `max_tokens` (`length`), or its client going away (the row stops at the next step, so a
disconnected client frees its slot). Only the worker thread runs the model: nothing about the model changes while it
serves.
"""

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.data.data_collator import pad_without_fast_tokenizer_warning
from transformers.generation.streamers import BaseStreamer

GATHER_WINDOWS = 4  # a batch waits at most this many gather windows for requests to join it


@dataclass(frozen=True)
class Sampling:
    """How a request samples: greedy when `temperature == 0`."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: Optional[int] = None

    def generate_kwargs(self) -> dict:
        if self.temperature == 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": 0}

    def group(self) -> tuple:
        """Requests of one group share a batch; a seeded request is a group of its own."""
        if self.seed is not None:
            return ("seeded", id(self))
        return (self.temperature, self.top_p if self.temperature else 1.0)


@dataclass
class Event:
    """What a request's consumer receives: text (`delta`), then one final event with `finish_reason` (or `error`)."""

    delta: str = ""
    finish_reason: Optional[str] = None
    error: Optional[BaseException] = None


@dataclass(eq=False)
class Request:
    """One prompt to answer: `features` is the processor's output for it alone (`input_ids`, `pixel_values`,
    `image_sizes` for AnyRes), `deliver` receives its `Event`s (from the worker thread)."""

    features: dict
    max_new_tokens: int
    sampling: Sampling
    deliver: Callable[[Event], None]
    stop: tuple = ()
    tokens: list = field(default_factory=list)
    text: str = ""  # the answer so far (whole characters)
    sent: int = 0  # how much of `text` was delivered
    prefix: int = 0  # the decoding window: tokens[prefix:read] are already in `text`
    read: int = 0
    finish_reason: Optional[str] = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def prompt_tokens(self) -> int:
        return len(self.features["input_ids"])

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.cancelled.is_set()

    def cancel(self) -> None:
        """The client went away: the row stops at the next step and nothing more is delivered."""
        self.cancelled.set()


class _Rows(BaseStreamer, StoppingCriteria):
    """A batch's requests, fed each step's tokens (as `streamer`) and asked which rows are done (as a stopping
    criterion, after the tokens of the step arrived: transformers calls them in that order)."""

    def __init__(self, requests: list, tokenizer, eos_ids: set, on_dropped: Callable[[], None]):
        self.requests, self.tokenizer, self.eos_ids, self.on_dropped = requests, tokenizer, eos_ids, on_dropped
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first call carries the prompts
            self.prompt_seen = True
            return
        for request, token in zip(self.requests, value.reshape(-1).tolist()):
            if request.done:
                continue
            request.tokens.append(token)
            if token in self.eos_ids:
                self._finish(request, "stop")
                continue
            self._advance(request)
            if request.finish_reason is None and len(request.tokens) >= request.max_new_tokens:
                self._finish(request, "length")

    def _advance(self, request: Request) -> None:
        """Decode the new token within a short window (what follows the last whole characters), as text
        generation servers do, so a long answer costs no more per token than a short one."""
        window = self.tokenizer.decode(request.tokens[request.prefix:], skip_special_tokens=True)
        before = self.tokenizer.decode(request.tokens[request.prefix:request.read], skip_special_tokens=True)
        if len(window) <= len(before) or window.endswith("\ufffd"):  # an incomplete character: wait for more
            return
        request.text += window[len(before):]
        request.prefix, request.read = request.read, len(request.tokens)
        longest = max((len(stop) for stop in request.stop), default=0)
        hits = [hit for hit in (request.text.find(stop, max(0, request.sent - longest)) for stop in request.stop)
                if hit >= 0]
        if hits:
            self._finish(request, "stop", request.text[: min(hits)])
            return
        safe = len(request.text)  # hold back what may be the start of a stop string
        for stop in request.stop:
            for k in range(min(len(stop) - 1, safe), 0, -1):
                if request.text.endswith(stop[:k]):
                    safe = min(safe, len(request.text) - k)
                    break
        if safe > request.sent:
            request.deliver(Event(delta=request.text[request.sent:safe]))
            request.sent = safe

    def _finish(self, request: Request, reason: str, text: Optional[str] = None) -> None:
        """The rest of the text (what was held back, an incomplete character at the end as the decoder renders it;
        `text` when a stop string cut it), then the finish event."""
        if request.cancelled.is_set():
            return
        request.finish_reason = reason
        request.text = self.tokenizer.decode(request.tokens, skip_special_tokens=True) if text is None else text
        if len(request.text) > request.sent:
            request.deliver(Event(delta=request.text[request.sent:]))
            request.sent = len(request.text)
        request.deliver(Event(finish_reason=reason))

    def end(self) -> None:
        for request in self.requests:  # e.g. rows generate ended for (its own max length) before we did
            if not request.done:
                self._finish(request, "length")

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.BoolTensor:
        for request in self.requests:
            if request.cancelled.is_set() and request.finish_reason is None:
                request.finish_reason = "cancelled"  # its client went away mid-answer: the row stops here
                self.on_dropped()
        return torch.tensor([request.done for request in self.requests], device=input_ids.device)


class Engine:
    """Batches requests into `model.generate` on one worker thread.

    `model`: a `LlavaForConditionalGeneration` (on its device) or an `ORTLlavaForConditionalGeneration`;
    `processor`: its `LlavaProcessor`. `max_batch_size` rows per `generate`; a batch starts once no request has
    joined it for `gather_seconds` (a lone request waits that long), at the latest `GATHER_WINDOWS` of them after its
    first request.
    """

    def __init__(self, model, processor, max_batch_size: int = 8, gather_seconds: float = 0.02):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size}: expected at least 1.")
        self.model, self.processor = model, processor
        self.tokenizer = processor.tokenizer
        self.max_batch_size, self.gather_seconds = max_batch_size, gather_seconds
        config = getattr(model, "generation_config", None)
        eos = getattr(config, "eos_token_id", None)
        eos = self.tokenizer.eos_token_id if eos is None else eos
        self.eos_ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.context_length = _context_length(model)
        self.batches: list[int] = []  # the size of every batch run (what the tests and benchmarks read)
        self.dropped = 0  # rows stopped mid-answer because their client went away
        self._running: list = []  # the batch being generated
        self._queue: "queue.Queue[Optional[Request]]" = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="hf-llava-engine", daemon=True)
        self._worker.start()

    # --- the callers' side ---------------------------------------------------------------------------------------

    def submit(self, request: Request) -> Request:
        """Queue `request`; its events go to `request.deliver` from the worker thread."""
        if not self._worker.is_alive():
            raise RuntimeError("The generation engine has stopped.")
        self._queue.put(request)
        return request

    def stream(self, features: dict, max_new_tokens: int, sampling: Sampling = Sampling(), stop: tuple = ()):
        """A blocking iterator of `Event`s for one prompt (for threads: Gradio's handlers, the terminal chat).
        Closing it early cancels the request."""
        events: "queue.Queue[Event]" = queue.Queue()
        request = self.submit(Request(features, max_new_tokens, sampling, events.put, tuple(stop)))
        try:
            while True:
                event = events.get()
                yield event
                if event.finish_reason is not None or event.error is not None:
                    return
        finally:
            request.cancel()

    def _dropped(self) -> None:
        self.dropped += 1

    def close(self) -> None:
        """Stop the worker: the batch it runs ends at its next step, waiting requests are dropped."""
        for request in list(self._running):
            request.cancel()
        self._queue.put(None)
        self._worker.join(timeout=30)

    # --- the worker ----------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            waiting = [first]
            start = time.monotonic()
            deadline = start + self.gather_seconds
            while len(waiting) < self.max_batch_size:
                try:
                    more = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                waiting.append(more)
                deadline = min(time.monotonic() + self.gather_seconds, start + GATHER_WINDOWS * self.gather_seconds)
            groups: dict = {}
            for request in waiting:
                if request.cancelled.is_set():  # its client left before it started
                    self._dropped()
                else:
                    groups.setdefault(request.sampling.group(), []).append(request)
            for requests in groups.values():
                self._generate(requests)

    def _generate(self, requests: list) -> None:
        rows = _Rows(requests, self.tokenizer, self.eos_ids, self._dropped)
        self._running = requests
        try:
            inputs = self._batch([request.features for request in requests])
            sampling = requests[0].sampling
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            self.batches.append(len(requests))
            self.model.generate(
                **inputs, max_new_tokens=max(request.max_new_tokens for request in requests),
                pad_token_id=self.pad_id, streamer=rows, stopping_criteria=StoppingCriteriaList([rows]),
                **sampling.generate_kwargs(),
            )
        except Exception as error:  # the batch fails, the server goes on
            for request in requests:
                if request.finish_reason is None:
                    request.finish_reason = "error"
                    request.deliver(Event(error=error))

    def _batch(self, features: list) -> dict[str, Any]:
        """Each request's processor output -> one left-padded batch (AnyRes tiles padded to the largest count)."""
        padded = pad_without_fast_tokenizer_warning(  # transformers' collators' way: a fast tokenizer pads as well
            self.tokenizer, [{"input_ids": f["input_ids"], "attention_mask": f["attention_mask"]} for f in features],
            padding=True, padding_side="left", return_tensors="pt")
        batch = {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]}
        pixels = [np.asarray(p) for f in features for p in f.get("pixel_values", [])]
        if pixels:
            if pixels[0].ndim == 4:  # AnyRes: (tiles, C, H, W) each, zero tiles up to the largest count
                tiles = max(p.shape[0] for p in pixels)
                pixels = [np.concatenate([p, np.zeros((tiles - len(p), *p.shape[1:]), p.dtype)]) for p in pixels]
            batch["pixel_values"] = torch.from_numpy(np.stack(pixels))
            if any("image_sizes" in f for f in features):
                batch["image_sizes"] = torch.tensor([s for f in features for s in f.get("image_sizes", [])])
        device = getattr(self.model, "device", None)
        if isinstance(device, torch.device):
            dtype = getattr(self.model, "dtype", torch.float32)
            batch = {k: v.to(device, dtype) if k == "pixel_values" else v.to(device) for k, v in batch.items()}
        return batch


def _context_length(model) -> Optional[int]:
    config = getattr(model, "config", None)
    text_config = getattr(config, "text_config", None)
    return getattr(text_config, "max_position_embeddings", None)


__all__ = ["Engine", "Event", "Request", "Sampling"]
