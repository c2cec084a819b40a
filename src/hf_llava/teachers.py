"""Teachers: chat language models that answer lists of chat messages (datagen's writer, eval's judge).

A teacher takes requests, each a list of OpenAI-style messages (`{"role": "system"|"user"|"assistant",
"content": str}`), and gives one `TeacherReply` per request: the text, or the error that stopped it, and
how many times it was retried. One failed request never stops the others.

- `OpenAITeacher`: any OpenAI-compatible chat-completions server (OpenAI, vLLM, SGLang, llama.cpp, TGI)
  through the official `openai` client, which owns the retries (429, 5xx, timeouts; exponential backoff,
  honouring the server's Retry-After) and the per-request timeout; we only bound the concurrency.
- `LocalTeacher`: a transformers chat LM from a folder, generating in batches (offline teams).

The API key comes from `OPENAI_API_KEY` (or `api_key=`) and goes to the client only: it is never printed,
logged or written. Without one, a placeholder is sent (local servers ignore it).

A server that cannot serve any request (nothing listening, the key refused, a wrong URL or model name: 404)
would otherwise fail every request after all its retries, one log line each, for as long as the run lasts:
`OpenAITeacher` raises `TeacherUnavailable` after `STOP_AFTER` such failures in a row instead.
"""

import argparse
import inspect
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from itertools import islice
from typing import Optional, Protocol, runtime_checkable

Messages = list[dict]  # [{"role": "system" | "user" | "assistant", "content": str}, ...]
PLACEHOLDER_API_KEY = "EMPTY"  # what vLLM / SGLang docs use; sent when OPENAI_API_KEY is unset
STOP_AFTER = 3  # failures in a row that say the server cannot serve any request (each already retried)
_MAX_ERROR_CHARS = 300  # a server's error body can be a whole HTML page


class TeacherUnavailable(ConnectionError):
    """The server cannot serve any request: unreachable, refusing the key, or no such URL or model."""


@dataclass(frozen=True)
class TeacherReply:
    """One request's outcome: `text` (possibly empty) or `error`; `retries` the client's retries for it.

    `truncated` is true when the reply stopped at the token limit (its end is missing).
    """

    text: Optional[str] = None
    error: Optional[str] = None
    retries: int = 0
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


@runtime_checkable
class Teacher(Protocol):
    """What datagen and the judge need from a teacher. `name` is recorded with the results (the model)."""

    name: str

    def complete(self, requests: Iterable[Messages]) -> list[TeacherReply]:
        """One reply per request, in the requests' order."""

    def complete_iter(self, requests: Iterable[Messages]) -> Iterator[tuple[int, TeacherReply]]:
        """`(index, reply)` pairs as replies arrive (any order); `requests` is consumed lazily."""


class BaseTeacher:
    """Gives a teacher `complete` from its `complete_iter` (subclasses implement `complete_iter`)."""

    name: str = "teacher"

    def complete(self, requests: Iterable[Messages]) -> list[TeacherReply]:
        replies = dict(self.complete_iter(requests))
        return [replies[i] for i in range(len(replies))]

    def complete_iter(self, requests: Iterable[Messages]) -> Iterator[tuple[int, TeacherReply]]:
        raise NotImplementedError


def _short(error: BaseException, secret: Optional[str] = None) -> str:
    """One line for an error; `secret` (the API key) is masked should a server echo it back."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    if secret:
        text = text.replace(secret, "***")
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + "..."


class OpenAITeacher(BaseTeacher):
    """An OpenAI-compatible chat-completions server at `base_url` serving `model`.

    At most `concurrency` requests are in flight. The `openai` client retries each one up to
    `max_retries` times on 429 / 408 / 409 / 5xx / connection errors / timeouts, with its exponential
    backoff (or the server's Retry-After); `timeout` (seconds) bounds each attempt.
    """

    def __init__(self, base_url: str, model: str, *, concurrency: int = 8, timeout: float = 120.0,
                 max_retries: int = 4, temperature: float = 0.7, max_tokens: int = 1024,
                 api_key: Optional[str] = None, extra_body: Optional[dict] = None):
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url={base_url!r}: expected the server's http(s) URL, "
                             "e.g. http://localhost:8000/v1.")
        if not model:
            raise ValueError("model='': name the model the server serves (its id in GET /v1/models).")
        for setting, value in (("concurrency", concurrency), ("timeout", timeout), ("max_tokens", max_tokens)):
            if value <= 0:
                raise ValueError(f"{setting}={value}: must be positive.")
        if max_retries < 0:
            raise ValueError(f"max_retries={max_retries}: must be 0 or more.")
        from ._extras import require

        openai = require("openai", "teacher", "A teacher or judge on an OpenAI-compatible server")

        self.name, self.base_url, self.concurrency, self.timeout = model, base_url, concurrency, timeout
        self.max_retries, self.temperature, self.max_tokens = max_retries, temperature, max_tokens
        self.extra_body = extra_body
        self._key = api_key or os.environ.get("OPENAI_API_KEY") or PLACEHOLDER_API_KEY
        self._client = openai.OpenAI(base_url=base_url, api_key=self._key, max_retries=max_retries, timeout=timeout)

    def __repr__(self) -> str:  # never the key
        return f"OpenAITeacher(base_url={self.base_url!r}, model={self.name!r})"

    def close(self) -> None:
        self._client.close()

    def _retryable(self, error: BaseException) -> bool:
        import openai

        if isinstance(error, openai.APIConnectionError):  # timeouts included
            return True
        status = getattr(error, "status_code", None)
        return status is not None and (status in (408, 409, 429) or status >= 500)

    def _server_failure(self, error: BaseException) -> Optional[str]:
        """What a failure says about the server as a whole: `connect`, `key` or `address`; None for one request."""
        import openai

        if isinstance(error, openai.APITimeoutError):  # a slow reply is one request's; a connect timeout is not
            # By name: the client's HTTP library (httpx, httpx2) differs between openai releases.
            return "connect" if type(error.__cause__).__name__ == "ConnectTimeout" else None
        if isinstance(error, openai.APIConnectionError):
            return "connect"
        if isinstance(error, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return "key"
        return "address" if isinstance(error, openai.NotFoundError) else None

    def _unavailable(self, failure: str, count: int, error: str) -> TeacherUnavailable:
        where = f"the server at base_url={self.base_url}"
        if failure == "connect":
            return TeacherUnavailable(f"cannot reach {where}: {count} request(s) in a row failed to connect ({error}); "
                                      "check that the server is running and that base_url=URL is its address "
                                      "(e.g. http://localhost:8000/v1).")
        if failure == "key":
            return TeacherUnavailable(f"{where} refused the API key {count} times in a row ({error}); set "
                                      "OPENAI_API_KEY to a key it accepts.")
        return TeacherUnavailable(f"{where} answered 404 to {count} requests in a row ({error}); check the URL (it "
                                  f"usually ends in /v1) and that it serves a model named {self.name!r} (GET "
                                  f"{self.base_url.rstrip('/')}/models lists them).")

    def check_reachable(self) -> None:
        """Raise `TeacherUnavailable` when nothing answers at `base_url` (one GET /models, not retried).

        For callers with slow work to do before the first request (eval answers every question first). Any
        answer, an error status included, proves the server is there: only a failed connection raises.
        """
        import openai

        try:
            self._client.with_options(max_retries=0, timeout=min(self.timeout, 10.0)).models.list()
        except openai.APIConnectionError as error:
            raise self._unavailable("connect", 1, _short(error, self._key)) from None
        except openai.OpenAIError:
            pass

    def _one(self, messages: Messages) -> tuple[TeacherReply, Optional[str]]:
        """One request's reply, and what its failure says about the server (`_server_failure`)."""
        import openai

        try:
            raw = self._client.chat.completions.with_raw_response.create(
                model=self.name, messages=messages, temperature=self.temperature, max_tokens=self.max_tokens,
                extra_body=self.extra_body,
            )
        except openai.OpenAIError as error:
            # The client gave up: on a retryable error after all its retries, otherwise at once.
            retries = self.max_retries if self._retryable(error) else 0
            return TeacherReply(error=_short(error, self._key), retries=retries), self._server_failure(error)
        retries = getattr(raw, "retries_taken", 0)
        try:
            completion = raw.parse()
        except (openai.OpenAIError, ValueError) as error:  # a body that is not a chat completion
            return TeacherReply(error=f"malformed reply: {_short(error, self._key)}", retries=retries), None
        choices = getattr(completion, "choices", None) or []
        message = getattr(choices[0], "message", None) if choices else None
        text = getattr(message, "content", None)
        if not isinstance(text, str):
            return TeacherReply(error="malformed reply: no choices[0].message.content", retries=retries), None
        truncated = getattr(choices[0], "finish_reason", None) == "length"
        return TeacherReply(text=text, retries=retries, truncated=truncated), None

    def complete_iter(self, requests: Iterable[Messages]) -> Iterator[tuple[int, TeacherReply]]:
        pending = iter(enumerate(requests))
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="teacher")
        in_flight: dict[Future, int] = {}

        def fill() -> None:  # keep `concurrency` requests in flight, pulling more only as replies arrive
            for index, messages in islice(pending, self.concurrency - len(in_flight)):
                in_flight[pool.submit(self._one, messages)] = index

        # Failures that say the server is down are held back: STOP_AFTER in a row end the run in one message
        # instead of a log line per request; any other reply first hands the held ones on.
        held: list[tuple[int, TeacherReply]] = []
        held_failure: Optional[str] = None
        try:
            fill()
            while in_flight:
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    index = in_flight.pop(future)
                    reply, failure = future.result()
                    if failure is not None and failure == held_failure:
                        held.append((index, reply))
                        if len(held) >= STOP_AFTER:
                            raise self._unavailable(failure, len(held), reply.error)
                        continue
                    yield from held
                    held, held_failure = [], failure
                    if failure is None:
                        yield index, reply
                    else:
                        held.append((index, reply))
                if not held or not in_flight:  # while the server looks down, send nothing new
                    fill()
            yield from held
        finally:  # also on Ctrl-C or when the caller stops early: queued requests are never sent
            pool.shutdown(wait=False, cancel_futures=True)


def _has_chat_template(path: str) -> bool:
    """Whether a saved tokenizer has a chat template (in tokenizer_config.json or a template file)."""
    import json

    if any(os.path.isfile(os.path.join(path, f)) for f in ("chat_template.jinja", "chat_template.json")):
        return True
    config = os.path.join(path, "tokenizer_config.json")
    if not os.path.isfile(config):
        return False
    with open(config, encoding="utf-8") as f:
        return bool(json.load(f).get("chat_template"))


class LocalTeacher(BaseTeacher):
    """A transformers chat LM saved in `path` (config, weights, tokenizer with a chat template).

    The folder is checked at once and the model loaded on the first request; replies are generated in
    batches of `batch_size` (left padding), sampled when `temperature > 0` (seeded by `seed`).
    """

    def __init__(self, path: str, *, batch_size: int = 8, max_tokens: int = 1024, temperature: float = 0.7,
                 seed: int = 0, device: Optional[str] = None, name: Optional[str] = None):
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"local_model={path}: no such folder; pass a saved transformers chat LM folder.")
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"local_model={path}: no config.json; pass a folder written by save_pretrained.")
        if not _has_chat_template(path):
            raise ValueError(f"local_model={path}: the tokenizer has no chat template; use a chat (instruct) model "
                             "or add one (tokenizer.chat_template = ...; save_pretrained).")
        for setting, value in (("batch_size", batch_size), ("max_tokens", max_tokens)):
            if value <= 0:  # `setting`, not `name`: `name` is the label recorded with the samples
                raise ValueError(f"{setting}={value}: must be positive.")
        self.path, self.batch_size, self.max_tokens = path, batch_size, max_tokens
        self.temperature, self.seed, self.device = temperature, seed, device
        self.name = name or os.path.basename(os.path.normpath(os.path.abspath(path)))
        self._model = self._tokenizer = None

    def __repr__(self) -> str:
        return f"LocalTeacher({self.path!r})"

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(self.path)
        tokenizer.padding_side = "left"  # generation continues at the right end of every row
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._model = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype).to(device).eval()
        self._tokenizer = tokenizer
        torch.manual_seed(self.seed)

    def _generate(self, batch: list[Messages]) -> list[TeacherReply]:
        import torch

        tok = self._tokenizer
        texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in batch]
        # The template already wrote the special tokens (BOS) where the model expects them.
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self._model.device)
        sample = self.temperature > 0
        with torch.no_grad():
            out = self._model.generate(
                **enc, max_new_tokens=self.max_tokens, do_sample=sample, pad_token_id=tok.pad_token_id,
                **({"temperature": self.temperature} if sample else {}),
            )
        new_tokens = out[:, enc["input_ids"].shape[1]:]  # (B, generated)
        replies = []
        for row in new_tokens.tolist():
            ended = tok.eos_token_id in row
            replies.append(TeacherReply(text=tok.decode(row, skip_special_tokens=True), truncated=not ended))
        return replies

    def complete_iter(self, requests: Iterable[Messages]) -> Iterator[tuple[int, TeacherReply]]:
        if self._model is None:
            self._load()
        pending = iter(requests)
        start = 0
        while batch := list(islice(pending, self.batch_size)):
            for offset, reply in enumerate(self._generate(batch)):
                yield start + offset, reply
            start += len(batch)


def add_teacher_arguments(group, *, required: bool = False, role: str = "teacher") -> None:
    """The OpenAI-compatible server's flags (`--base-url --concurrency --timeout --max-retries`) on `group`
    (a parser or an argument group), with `OpenAITeacher`'s own defaults; `teacher_settings` reads them back."""
    defaults = {name: p.default for name, p in inspect.signature(OpenAITeacher).parameters.items()}
    group.add_argument("--base-url", metavar="URL", required=required,
                       help="OpenAI-compatible server, e.g. http://localhost:8000/v1 (vLLM, SGLang) or "
                       "https://api.openai.com/v1; the key is read from OPENAI_API_KEY")
    group.add_argument("--concurrency", type=int, default=defaults["concurrency"], help=f"{role} requests in flight")
    group.add_argument("--timeout", type=float, default=defaults["timeout"],
                       help=f"seconds per {role} request attempt")
    group.add_argument("--max-retries", type=int, default=defaults["max_retries"],
                       help="client retries on 429 / 5xx / timeouts, with exponential backoff")


def teacher_settings(args: argparse.Namespace) -> dict:
    """The `OpenAITeacher` keyword arguments that `add_teacher_arguments`' flags set."""
    return {"concurrency": args.concurrency, "timeout": args.timeout, "max_retries": args.max_retries}


__all__ = ["BaseTeacher", "LocalTeacher", "Messages", "OpenAITeacher", "PLACEHOLDER_API_KEY", "STOP_AFTER", "Teacher",
           "TeacherReply", "TeacherUnavailable", "add_teacher_arguments", "teacher_settings"]
