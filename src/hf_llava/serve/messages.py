"""OpenAI chat messages -> the model's prompt and images, with every refusal an `APIError` that names the problem.

User content is a string or a list of parts: `{"type": "text", "text": ...}` and `{"type": "image_url", "image_url":
{"url": ...}}` (or `"image_url": "..."`). Images come as `data:` URLs (base64 PNG / JPEG / WebP / anything PIL
reads); `http(s)` URLs only when the server allows remote images (fetched with a timeout and a size cap: a server
that fetches any URL it is handed can be turned against the network it sits in), local paths and `file://` URLs
only when it allows local images. Messages are rendered by the model's own chat template, an image part as the
template renders `{"type": "image"}`.
"""

import base64
import binascii
import io
import os
from dataclasses import dataclass
from typing import Optional

from PIL import Image, UnidentifiedImageError


class APIError(Exception):
    """A request the server refuses: `status` (4xx), OpenAI's error `type`, the request field at fault (`param`)."""

    def __init__(self, message: str, status: int = 400, param: Optional[str] = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.status, self.param, self.type = message, status, param, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": None}}


@dataclass(frozen=True)
class ImagePolicy:
    """Where images may come from and how large they may be."""

    max_pixels: int = 4096 * 4096
    max_bytes: int = 20 * 1024 * 1024
    allow_remote: bool = False
    allow_local: bool = False
    fetch_timeout: float = 10.0


def _decode(data: bytes, where: str, policy: ImagePolicy) -> Image.Image:
    if not data:
        raise APIError(f"{where}: the image is empty (0 bytes).", param=where)
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size  # read from the header, before any pixel is decoded
        if width * height > policy.max_pixels:
            raise APIError(f"{where}: the image has {width}x{height} = {width * height} pixels, more than this "
                           f"server's limit of {policy.max_pixels} (--max-image-pixels); send a smaller one.",
                           status=413, param=where)
        image.load()
    except APIError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise APIError(f"{where}: not a readable image ({error}).", param=where) from error
    if image.width == 0 or image.height == 0:
        raise APIError(f"{where}: zero-sized image ({image.width}x{image.height}).", param=where)
    return image.convert("RGB")


def load_image_url(url: str, where: str, policy: ImagePolicy) -> Image.Image:
    """An `image_url` -> an RGB image, or an `APIError` naming `where` (e.g. `messages[0].content[1]`)."""
    if not isinstance(url, str) or not url:
        raise APIError(f"{where}.image_url.url: expected a data: URL (or an http(s) URL / a path where this server "
                       "allows them).", param=where)
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if not header.endswith(";base64") or not payload:
            raise APIError(f"{where}: a data: URL must be 'data:image/...;base64,<data>'.", param=where)
        if len(payload) * 3 // 4 > policy.max_bytes:
            raise APIError(f"{where}: the image is larger than this server's limit of {policy.max_bytes} bytes.",
                           status=413, param=where)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as error:
            raise APIError(f"{where}: invalid base64 in the data: URL ({error}).", param=where) from error
        return _decode(data, where, policy)
    if url.startswith(("http://", "https://")):
        if not policy.allow_remote:
            raise APIError(f"{where}: this server does not fetch http(s) image URLs (start it with "
                           "--allow-remote-images to allow them); send the image as a data: URL.", param=where)
        return _decode(_fetch(url, where, policy), where, policy)
    path = url[len("file://"):] if url.startswith("file://") else url
    if "://" in path:
        raise APIError(f"{where}: unsupported URL scheme in {url[:40]!r}; send a data: URL.", param=where)
    if not policy.allow_local:
        raise APIError(f"{where}: this server does not read local image paths (start it with --allow-local-images "
                       "to allow them); send the image as a data: URL.", param=where)
    if not os.path.isfile(path):
        raise APIError(f"{where}: no such image file {path!r}.", param=where)
    if os.path.getsize(path) > policy.max_bytes:
        raise APIError(f"{where}: {path!r} is larger than this server's limit of {policy.max_bytes} bytes.",
                       status=413, param=where)
    with open(path, "rb") as f:
        return _decode(f.read(), where, policy)


def _fetch(url: str, where: str, policy: ImagePolicy) -> bytes:
    import httpx

    try:
        with httpx.stream("GET", url, timeout=policy.fetch_timeout, follow_redirects=True) as response:
            if response.status_code != 200:
                raise APIError(f"{where}: fetching {url} gave HTTP {response.status_code}.", param=where)
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > policy.max_bytes:
                    raise APIError(f"{where}: {url} is larger than this server's limit of {policy.max_bytes} bytes.",
                                   status=413, param=where)
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as error:
        raise APIError(f"{where}: could not fetch {url} ({type(error).__name__}: {error}).", param=where) from error


def to_conversation(messages, policy: ImagePolicy) -> tuple[list[dict], list[Image.Image]]:
    """OpenAI `messages` -> (the chat template's messages, the images in the order their parts appear)."""
    if not isinstance(messages, list) or not messages:
        raise APIError("messages: expected a non-empty list of {role, content} messages.", param="messages")
    conversation, images = [], []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise APIError(f"{where}: expected a message with role 'system', 'user' or 'assistant'.", param=where)
        content = message.get("content")
        if isinstance(content, str):
            conversation.append({"role": message["role"], "content": [{"type": "text", "text": content}]})
            continue
        if not isinstance(content, list):
            raise APIError(f"{where}.content: expected a string or a list of parts.", param=f"{where}.content")
        parts = []
        for j, part in enumerate(content):
            at = f"{where}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                parts.append({"type": "text", "text": str(part.get("text", ""))})
            elif kind == "image_url":
                if message["role"] != "user":
                    raise APIError(f"{at}: images go in user messages.", param=at)
                image_url = part.get("image_url")
                url = image_url.get("url") if isinstance(image_url, dict) else image_url
                images.append(load_image_url(url, at, policy))
                parts.append({"type": "image"})
            else:
                raise APIError(f"{at}: unsupported part type {kind!r}; expected 'text' or 'image_url'.", param=at)
        conversation.append({"role": message["role"], "content": parts})
    return conversation, images


__all__ = ["APIError", "ImagePolicy", "load_image_url", "to_conversation"]
