"""`LlavaDataCollator`: LLaVA samples -> padded `input_ids`, `attention_mask`, `labels`, `pixel_values`
(+ `image_sizes` for AnyRes).

What it owns: turning LLaVA turns into chat messages (placing the image before or after the first
question), rendering them with a LLaVA chat template, padding images to a square with the mean colour or not (per
`image_aspect_ratio`, as the original's data pipeline does, before any image processor; never for AnyRes, whose
processor tiles the image as it is), tokenizing through the processor (which expands `<image>`, for AnyRes to
each image's own count), padding AnyRes tiles across the batch, and the labels: -100 everywhere except the
assistant answers and their end-of-turn (`ChatFormat.assistant_end`, which must be one special token of the
tokenizer where the format says so). The answers' character spans come from rendering the conversation prefix
by prefix; the token mask comes from the fast tokenizer's offsets. A sample whose mask cannot be built raises.
Images are opened here, under the bad-image policy (`error` or `skip` with a count and a summary).
"""

import logging
import random
from typing import Any, Optional, Union

import numpy as np
import torch

from ..processing import CHAT_FORMATS, check_end_of_turn, expand_to_square, get_chat_template, load_image, mean_colour
from .llava_json import BAD_IMAGE_POLICIES, IMAGE_ASPECT_RATIOS, IMAGE_PLACEHOLDER, IMAGE_POSITIONS

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


class LlavaMaskError(ValueError):
    """The labels of a sample could not be built (the template does not render the answers as a prefix chain)."""


class LlavaDataCollator:
    """Collates rows of `load_llava_dataset` (`id`, `image`, `conversations`) into a training batch.

    Args:
        processor: a `LlavaProcessor` with a fast tokenizer (offsets are needed).
        template: a name from `CHAT_TEMPLATES` (`"plain"` for stage 1, `"vicuna_v1"` for stage 2) or Jinja source
            (then pass `assistant_end`).
        max_length: truncate longer samples with the processor's `truncation` (never through image tokens).
        truncation: `"text_only"` (drop text tokens, keep every image token) or `True` (raise if the cut would hit
            image tokens).
        image_position: `"before"` (LLaVA-1.5's training code: `<image>\\n` first, whatever the JSON says),
            `"random"` (before or after the first question, per sample, seeded: the paper), `"keep"` (where the
            data put `<image>`).
        image_aspect_ratio: `"pad"` (pad to a square with the image processor's mean colour, then the image
            processor: LLaVA-1.5 stage 2, with any image processor), `"square"` (the image processor's resize +
            centre crop, no pad: LLaVA-1.5 stage 1), `"anyres"` (LLaVA-NeXT: an AnyRes processor's tiles of the
            image as it is; the processor must be AnyRes, and an AnyRes processor takes nothing else), or None
            (the processor's own setting).
        seed: seeds `"random"`; the choice depends only on (seed, sample id), so it survives resume and workers.
        bad_image_policy: `"error"` raises on an unreadable image; `"skip"` drops the sample and counts it.
        padding_side: `"right"` (training default) or `"left"`.

    Returns (from `__call__`): `input_ids`, `attention_mask`, `labels` `(B, T)` and, when a sample has an image,
    `pixel_values` `(num_images, 3, H, W)`; AnyRes: `pixel_values` `(num_images, max_tiles, 3, H, W)` (each image's
    overview and grid tiles, zeros past its own up to the batch's largest count) and `image_sizes` `(num_images, 2)`
    (height, width of each original image); `data_report` (skipped / truncated-away samples of this batch) if
    `report_in_batch` and there are any (the hf-llava trainers pop it before the forward and summarise it at the end).
    """

    def __init__(
        self,
        processor,
        template: str = "vicuna_v1",
        max_length: Optional[int] = None,
        truncation: Union[bool, str] = "text_only",
        image_position: str = "before",
        seed: int = 0,
        bad_image_policy: str = "error",
        padding_side: str = "right",
        assistant_end: Optional[str] = None,
        pad_to_multiple_of: Optional[int] = None,
        report_in_batch: bool = False,
        image_aspect_ratio: Optional[str] = None,
    ):
        if image_position not in IMAGE_POSITIONS:
            raise ValueError(f"image_position={image_position!r}: expected one of {IMAGE_POSITIONS}.")
        if bad_image_policy not in BAD_IMAGE_POLICIES:
            raise ValueError(f"bad_image_policy={bad_image_policy!r}: expected one of {BAD_IMAGE_POLICIES}.")
        if truncation not in (True, "text_only"):
            raise ValueError(f"truncation={truncation!r}: expected 'text_only' or True.")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side={padding_side!r}: expected 'left' or 'right'.")
        self.pad_colour, self.image_kwargs = _image_settings(processor, image_aspect_ratio)
        self.anyres = bool(getattr(processor, "anyres", False))
        tokenizer = processor.tokenizer
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("LlavaDataCollator needs a fast tokenizer (offsets); load it with use_fast=True.")
        self.chat_template = get_chat_template(template)  # a known name or Jinja source, else an error
        self.template_name = template if template in CHAT_FORMATS else "<custom>"
        if template in CHAT_FORMATS:
            check_end_of_turn(tokenizer, CHAT_FORMATS[template])
            if assistant_end is None:
                assistant_end = CHAT_FORMATS[template].assistant_end
        self.processor = processor
        self.tokenizer = tokenizer
        self.assistant_end = assistant_end
        self.max_length = max_length
        self.truncation = truncation
        self.image_position = image_position
        self.seed = seed
        self.bad_image_policy = bad_image_policy
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of
        self.image_aspect_ratio = image_aspect_ratio
        self.image_token = processor.image_token
        self.image_token_id = processor.image_token_id
        self.report_in_batch = report_in_batch
        self.skipped: list[tuple[str, str, str]] = []  # (sample id, image path, reason)
        self.fully_truncated = 0
        self._fallback: Optional[dict] = None

    # ----- messages and rendering -----

    def _image_first(self, sample_id: str, first_value: str) -> bool:
        if self.image_position == "before":
            return True
        if self.image_position == "keep":
            return first_value.lstrip().startswith(IMAGE_PLACEHOLDER)
        return random.Random(f"{self.seed}:{sample_id}").random() < 0.5

    def to_messages(self, row: dict) -> list[dict]:
        """LLaVA turns -> transformers chat messages; the image becomes a content part of the first user turn."""
        messages = []
        has_image = row.get("image") is not None
        for j, turn in enumerate(row["conversations"]):
            role = "user" if turn["from"] == "human" else "assistant"
            value = turn["value"]
            if j == 0 and has_image:
                text = value.replace(IMAGE_PLACEHOLDER, "").strip()
                parts = [{"type": "text", "text": text}] if text else []
                image_part = {"type": "image"}
                parts = [image_part] + parts if self._image_first(row["id"], value) else parts + [image_part]
                messages.append({"role": role, "content": parts})
            else:
                messages.append({"role": role, "content": value})
        return messages

    def _render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def render_with_spans(self, row: dict) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character spans `[start, end)` of each assistant answer.

        A span runs from the end of the rendered prompt (with the generation prompt, e.g. `"... ASSISTANT:"`)
        to the end of the rendered turn (`"... answer</s>"`): it holds the separator space, the answer and
        the end-of-turn string, as the model must generate them after the generation prompt.
        """
        messages = self.to_messages(row)
        text = self._render(messages)
        spans = []
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self._render(messages[:k], add_generation_prompt=True)
            upto = self._render(messages[: k + 1])
            if not (upto.startswith(prompt) and text.startswith(upto)) or len(upto) <= len(prompt):
                raise LlavaMaskError(
                    f"Sample {row['id']!r}: template {self.template_name!r} does not render turn {k} as an extension "
                    "of the turns before it, so the answer's span cannot be located; use a LLaVA template or one "
                    "whose rendering of a prefix of the messages is a prefix of the full rendering."
                )
            if self.assistant_end and not upto.endswith(self.assistant_end):
                raise LlavaMaskError(
                    f"Sample {row['id']!r}: turn {k} renders as {upto[len(prompt):][-40:]!r}, which does not end with "
                    f"the template's end of turn {self.assistant_end!r}; pass the matching `assistant_end`."
                )
            spans.append((len(prompt), len(upto)))
        return text, spans

    # ----- labels -----

    def _labels(self, row: dict, ids: list[int], offsets: list, spans: list[tuple[int, int]]) -> list[int]:
        labels = [IGNORE_INDEX] * len(ids)
        trained = [0] * len(spans)
        for i, (token_id, (a, b)) in enumerate(zip(ids, offsets)):
            if b <= a or token_id == self.image_token_id:
                continue
            for s, (start, end) in enumerate(spans):
                if a < end and b > start:  # the token overlaps the answer span
                    labels[i] = token_id
                    trained[s] += 1
                    break
        if 0 in trained:
            raise LlavaMaskError(
                f"Sample {row['id']!r}: answer {trained.index(0)} maps to no token (spans {spans}); the tokenizer's "
                "offsets do not cover the rendered text. Check that the tokenizer is the model's fast tokenizer."
            )
        return labels

    def _expanded_spans(self, text: str, spans: list, tokens_per_image: list[int]) -> list[tuple[int, int]]:
        """Shift character spans from the rendered text to the processor's, through its one expansion function."""
        _, added = self.processor.expand_image_tokens(text, tokens_per_image)
        starts, pos = [], text.find(self.image_token)
        while pos != -1:
            starts.append(pos)
            pos = text.find(self.image_token, pos + 1)

        def shift(pos: int) -> int:
            return pos + sum(extra for start, extra in zip(starts, added) if start < pos)

        return [(shift(a), shift(b)) for a, b in spans]

    def _truncate(self, row: dict, ids: list[int], labels: list[int]) -> tuple[list, list]:
        """Cut to `max_length` at the positions the processor's truncation keeps (never image tokens)."""
        keep = self.processor.kept_positions(ids, self.truncation, self.max_length, f"Sample {row['id']!r}")
        return [ids[i] for i in keep], [labels[i] for i in keep]

    # ----- images -----

    def _load(self, row: dict) -> Optional[Any]:
        """The sample's image (PIL), None for text-only; raises or records under the bad-image policy."""
        if row.get("image") is None:
            return None
        try:
            return load_image(row["image"])
        except (ValueError, OSError) as err:
            if self.bad_image_policy == "error":
                raise ValueError(
                    f"Sample {row['id']!r}: cannot read its image ({err}). Fix or remove the file, or pass "
                    "bad_image_policy='skip' to skip such samples and get a summary at the end."
                ) from err
            self.skipped.append((row["id"], str(row["image"]), str(err)))
            logger.warning("Skipping sample %r: unreadable image (%s).", row["id"], err)
            return False

    def summary(self) -> str:
        """A one-paragraph summary of the skipped samples (empty string when none)."""
        return data_summary(self.skipped, self.fully_truncated)

    # ----- batch -----

    def encode(self, rows: list[dict], images: list) -> list[dict]:
        """Rows with their loaded images (or None) -> per-sample `input_ids`, `labels`, `pixel_values`."""
        rendered = [self.render_with_spans(row) for row in rows]
        present = [im for im in images if im is not None]
        if self.pad_colour is not None:
            present = [expand_to_square(im, self.pad_colour) for im in present]
        out = self.processor(
            images=present or None, text=[text for text, _ in rendered], return_offsets_mapping=True,
            **(self.image_kwargs if present else {}),
        )
        pixel_values = list(out["pixel_values"]) if present else []  # each (3, H, W); AnyRes: (tiles_i, 3, H, W)
        image_sizes = list(out["image_sizes"]) if present and self.anyres else []
        counts = self.processor.image_token_counts(out) if present else []
        samples, next_image = [], 0
        for i, (row, (text, spans)) in enumerate(zip(rows, rendered)):
            ids, offsets = list(out["input_ids"][i]), out["offset_mapping"][i]
            mine = counts[next_image:next_image + text.count(self.image_token)]
            labels = self._labels(row, ids, offsets, self._expanded_spans(text, spans, mine))
            if self.max_length is not None and len(ids) > self.max_length:
                ids, labels = self._truncate(row, ids, labels)
                if all(label == IGNORE_INDEX for label in labels):
                    self.fully_truncated += 1
            sample = {"input_ids": ids, "labels": labels, "id": row["id"]}
            if images[i] is not None:
                sample["pixel_values"] = np.asarray(pixel_values[next_image])
                if self.anyres:
                    sample["image_sizes"] = [int(x) for x in image_sizes[next_image]]
                next_image += 1
            samples.append(sample)
        return samples

    def __call__(self, rows: list[dict]) -> dict[str, Any]:
        """Rows -> a padded batch. With `report_in_batch`, what this call skipped or truncated away rides
        along under `data_report` (for trainers: collators in dataloader workers or other ranks keep their
        own counters, which the main process never sees)."""
        seen_skipped, seen_truncated = len(self.skipped), self.fully_truncated
        batch = self._collate(rows)
        if self.report_in_batch and (len(self.skipped) > seen_skipped or self.fully_truncated > seen_truncated):
            batch["data_report"] = {"skipped": self.skipped[seen_skipped:],
                                    "fully_truncated": self.fully_truncated - seen_truncated}
        return batch

    def _collate(self, rows: list[dict]) -> dict[str, Any]:
        loaded = [(row, self._load(row)) for row in rows]
        good = [(row, image) for row, image in loaded if image is not False]
        if not good:
            if self._fallback is None:
                raise ValueError(
                    f"Every sample of the batch has an unreadable image ({[row['id'] for row in rows]}) and no "
                    "earlier sample can stand in; fix the image files."
                )
            logger.warning("A whole batch had unreadable images; repeating the last good sample in its place.")
            good = [self._fallback]
        self._fallback = good[-1]
        samples = self.encode([row for row, _ in good], [image for _, image in good])
        return self.pad(samples)

    def pad(self, samples: list[dict]) -> dict[str, Any]:
        """Per-sample lists -> `(B, T)` tensors padded on `padding_side` (labels with -100)."""
        length = max(len(s["input_ids"]) for s in samples)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        pad_id = self.tokenizer.pad_token_id
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for s in samples:
            n = length - len(s["input_ids"])
            for key, values, fill in (("input_ids", s["input_ids"], pad_id), ("labels", s["labels"], IGNORE_INDEX),
                                      ("attention_mask", [1] * len(s["input_ids"]), 0)):
                batch[key].append(values + [fill] * n if self.padding_side == "right" else [fill] * n + values)
        out = {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}
        pixels = [s["pixel_values"] for s in samples if "pixel_values" in s]
        if pixels and self.anyres:  # each (tiles_i, 3, H, W): zero tiles up to the batch's largest count
            tiles = max(p.shape[0] for p in pixels)
            pixels = [np.concatenate([p, np.zeros((tiles - p.shape[0], *p.shape[1:]), p.dtype)]) for p in pixels]
            out["image_sizes"] = torch.tensor([s["image_sizes"] for s in samples if "image_sizes" in s],
                                              dtype=torch.long)  # (num_images, 2)
        if pixels:
            out["pixel_values"] = torch.from_numpy(np.stack(pixels)).float()  # (num_images, [max_tiles,] 3, H, W)
        return out


def _image_settings(processor, image_aspect_ratio: Optional[str]) -> tuple[Optional[tuple], dict]:
    """`(colour to pad images to a square with, or None; kwargs for the image processor)` for `image_aspect_ratio`.

    We pad ourselves, as the original's data pipeline does, so `"pad"` works with any image processor
    (CLIP's, SigLIP's); a `LlavaImageProcessor`'s own padding (the same pixels) is turned off. None keeps the
    processor's own setting. AnyRes: no padding to a square, and the tiles are padded across the batch by `pad`
    (the `LlavaNextImageProcessor`'s `do_pad` off); the processor and `image_aspect_ratio` must agree on AnyRes.
    """
    if image_aspect_ratio is not None and image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
        raise ValueError(f"image_aspect_ratio={image_aspect_ratio!r}: expected one of {IMAGE_ASPECT_RATIOS}.")
    image_processor = getattr(processor, "image_processor", None)
    if getattr(processor, "anyres", False):
        if image_aspect_ratio not in (None, "anyres"):
            raise ValueError(
                f"image_aspect_ratio={image_aspect_ratio!r}, but the processor is AnyRes (LLaVA-NeXT: its "
                f"{type(image_processor).__name__} cuts each image into tiles at image_grid_pinpoints); pass "
                "image_aspect_ratio='anyres'."
            )
        return None, {"do_pad": False}
    if image_aspect_ratio == "anyres":
        raise ValueError(
            f"image_aspect_ratio='anyres', but the processor's {type(image_processor).__name__} has no "
            "image_grid_pinpoints, so images cannot be cut into AnyRes tiles: use the processor of a LLaVA-NeXT model "
            "(a LlavaNextImageProcessor), or image_aspect_ratio='pad'."
        )
    if image_aspect_ratio is None:
        return None, {}
    kwargs = {"do_pad": False} if hasattr(image_processor, "pad_to_square") else {}  # LlavaImageProcessor's switch
    return (mean_colour(image_processor) if image_aspect_ratio == "pad" else None), kwargs


def data_summary(skipped: list, fully_truncated: int) -> str:
    """One paragraph on the samples skipped for unreadable images and those truncated to no answer."""
    lines = []
    if skipped:
        shown = ", ".join(f"{sid!r} ({path})" for sid, path, _ in skipped[:10])
        more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        lines.append(f"skipped {len(skipped)} sample(s) with unreadable images: {shown}{more}")
    if fully_truncated:
        lines.append(f"{fully_truncated} sample(s) had every answer token truncated away (raise max_length)")
    return "; ".join(lines)


__all__ = ["IGNORE_INDEX", "LlavaDataCollator", "LlavaMaskError", "data_summary"]
