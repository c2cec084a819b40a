"""Reading and validating LLaVA conversation data (JSON or JSONL) into a `datasets.Dataset`.

The format is the original LLaVA one:
`[{"id": ..., "image": "coco/0001.jpg", "conversations": [{"from": "human", "value": "<image>\\nQ"},
{"from": "gpt", "value": "A"}, ...]}]`.
Samples without an `image` key are text-only; `image` paths resolve against `image_folder`. Everything is
checked up front and every problem is reported with the file, the sample id (and index) and what was
expected; images are only *opened* during training (the collator does that, under the bad-image policy).
This module also holds the option names of the data pipeline (image position, aspect ratio, bad-image
policy), so that the CLI can offer them without importing the collator's torch.
"""

import json
import logging
import os
from typing import TYPE_CHECKING, Any, Optional, Union

from .._io import listed

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"
ROLES = ("human", "gpt")
BAD_IMAGE_POLICIES = ("error", "skip")
# Where the image goes in the first turn: LLaVA-1.5's code puts it first whatever the JSON says ("before"),
# the paper randomises it ("random"), "keep" follows the JSON's `<image>`.
IMAGE_POSITIONS = ("before", "random", "keep")
# How images reach the tower (`image_aspect_ratio`): "pad" to a square with the mean colour (LLaVA-1.5),
# "square" = resize + centre crop, "anyres" = LLaVA-NeXT's tiles (an AnyRes processor). The same names as
# `LlavaConfig.image_aspect_ratio` (modeling), which data may not import; a test keeps the two equal.
IMAGE_ASPECT_RATIOS = ("pad", "square", "anyres")
_MAX_REPORTED = 20


def read_llava_records(path: Union[str, os.PathLike], source: Optional[str] = None) -> list[dict]:
    """The raw samples of a LLaVA `.json` (a list) or `.jsonl` (one object per line) file.

    `source` names the file in error messages (default: its path).
    """
    path = os.fspath(path)
    source = source or path
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{source}: no such data file; pass a LLaVA .json or .jsonl file.")
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            records = []
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{source}, line {line_no}: not valid JSON ({err}).") from err
            return records
        try:
            records = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}: not valid JSON ({err}); JSONL files must end in .jsonl.") from err
    if not isinstance(records, list):
        raise ValueError(f"{source}: expected a JSON list of samples, got a {type(records).__name__}.")
    return records


def _sample_problems(record: Any, image_folder: Optional[str], check_images: bool) -> tuple[list[str], bool]:
    """Problems of one sample (empty when valid), and whether the only problem is a missing image file."""
    if not isinstance(record, dict):
        return [f"expected an object with 'id' and 'conversations', got a {type(record).__name__}"], False
    problems = []
    if "id" not in record:
        problems.append("missing field 'id'")
    conversations = record.get("conversations")
    if conversations is None:
        problems.append("missing field 'conversations'")
    elif not isinstance(conversations, list) or not conversations:
        problems.append("'conversations' must be a non-empty list of {'from', 'value'} turns")
    else:
        for j, turn in enumerate(conversations):
            if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
                problems.append(f"turn {j}: missing field 'from' or 'value'")
                continue
            if turn["from"] not in ROLES:
                problems.append(f"turn {j}: unknown role {turn['from']!r} (expected 'human' or 'gpt')")
            elif turn["from"] != ROLES[j % 2]:
                problems.append(
                    f"turns out of order: turn {j} is from {turn['from']!r}, expected {ROLES[j % 2]!r} "
                    "(turns alternate human, gpt, starting with human)"
                )
            if not isinstance(turn["value"], str):
                problems.append(f"turn {j}: 'value' must be a string")
        if not problems and conversations[-1]["from"] != "gpt":
            problems.append("turns out of order: the last turn must be from 'gpt' (an answer to train on)")
        if not problems:
            counts = [turn["value"].count(IMAGE_PLACEHOLDER) for turn in conversations]
            has_image = record.get("image") not in (None, "")
            if sum(counts) and not has_image:
                problems.append(f"'{IMAGE_PLACEHOLDER}' in the text but the sample has no 'image' field")
            elif sum(counts) > 1 or sum(counts[1:]):
                problems.append(
                    f"'{IMAGE_PLACEHOLDER}' must appear once, in the first human turn (found {counts} per turn)"
                )
    image = record.get("image")
    if image not in (None, "") and not problems:
        if not isinstance(image, str):
            problems.append(f"'image' must be a file name, got {type(image).__name__} (one image per sample)")
        elif check_images and not os.path.isfile(os.path.join(image_folder or "", image)):
            return [_missing_image(image, image_folder)], True
    return problems, False


def _missing_image(image: str, image_folder: Optional[str]) -> str:
    """Names the path that was looked for and where relative `image` paths resolve from."""
    resolved = os.path.abspath(os.path.join(image_folder or "", image))
    if image_folder is None:
        return f"image file missing: {resolved!r} (image paths resolve against image_folder=DIR, not given)"
    return f"image file missing: {resolved!r} (its 'image' path {image!r} joined with image_folder={image_folder!r})"


def validate_llava_records(
    records: list, source: str = "<records>", image_folder: Optional[str] = None, check_images: bool = True,
    bad_image_policy: str = "error",
) -> list[dict]:
    """Check every sample; return the valid ones (normalised) or raise one `ValueError` listing the problems.

    Missing image files raise under `bad_image_policy="error"` and drop the sample (with a logged summary)
    under `"skip"`; every other problem always raises.
    """
    if bad_image_policy not in BAD_IMAGE_POLICIES:
        raise ValueError(f"bad_image_policy={bad_image_policy!r}: expected one of {BAD_IMAGE_POLICIES}.")
    errors, missing, kept = [], [], []
    missing_first = False  # whether the first error is a missing image file (its fix differs)
    for index, record in enumerate(records):
        problems, only_missing_image = _sample_problems(record, image_folder, check_images)
        sample_id = record.get("id", "?") if isinstance(record, dict) else "?"
        where = f"sample {sample_id!r} (index {index})"
        if only_missing_image and bad_image_policy == "skip":
            missing.append(f"{where}: {problems[0]}")
            continue
        if problems and not errors:
            missing_first = only_missing_image
        errors.extend(f"{where}: {p}" for p in problems)
        if not problems:
            image = record.get("image")
            kept.append({
                "id": str(record["id"]),
                "image": os.path.join(image_folder or "", image) if image not in (None, "") else None,
                "conversations": [{"from": t["from"], "value": t["value"]} for t in record["conversations"]],
            })
    if errors:
        # First line: the count, the first problem and the fix (what a CLI shows); then the other problems.
        fix = ("fix the paths or image_folder=DIR, or pass bad_image_policy='skip' to drop samples whose image is "
               "missing" if missing_first else "fix or remove these samples")
        others = listed(errors[1:], _MAX_REPORTED - 1, sep="\n  ")
        others = f"\n  {others}" if others else ""
        count = "1 problem" if len(errors) == 1 else f"{len(errors)} problems"
        first = "" if len(errors) == 1 else ", the first"
        raise ValueError(f"{source}: {count} in the LLaVA data{first}: {errors[0]}; {fix}.{others}")
    if missing:
        logger.warning("%s: skipped %d sample(s) whose image file is missing:\n  %s", source, len(missing),
                       "\n  ".join(missing[:_MAX_REPORTED]))
    if not kept:
        raise ValueError(f"{source}: no usable samples.")
    return kept


def load_llava_dataset(
    path: Union[str, os.PathLike, list],
    image_folder: Optional[Union[str, os.PathLike]] = None,
    check_images: bool = True,
    bad_image_policy: str = "error",
    source: Optional[str] = None,
) -> "Dataset":
    """A LLaVA `.json` / `.jsonl` file (or a list of samples) -> a validated `datasets.Dataset`.

    Columns: `id` (str), `image` (path joined with `image_folder`, or None for text-only samples) and
    `conversations` (list of `{"from", "value"}`). Images are not opened here (the collator loads them).
    `check_images` checks that every image file exists; see `validate_llava_records` for `bad_image_policy`.
    `source` names the data in error messages (default: the file's path).
    """
    from datasets import Dataset

    if isinstance(path, list):
        records, source = path, source or "<records>"
    else:
        source = source or os.fspath(path)
        records = read_llava_records(path, source)
    folder = os.fspath(image_folder) if image_folder is not None else None
    if folder is not None and check_images and not os.path.isdir(folder):
        raise FileNotFoundError(f"{source}: image_folder={folder!r} does not exist; image paths resolve against it.")
    kept = validate_llava_records(records, source, folder, check_images, bad_image_policy)
    # `datasets` infers one schema for all rows: keep `image` a string column (None for text-only).
    return Dataset.from_list(kept)


__all__ = [
    "BAD_IMAGE_POLICIES", "IMAGE_ASPECT_RATIOS", "IMAGE_POSITIONS", "load_llava_dataset", "read_llava_records",
    "validate_llava_records",
]
