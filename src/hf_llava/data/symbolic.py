"""The symbolic image: what a text-only model knows of a picture (its captions and boxes), and its text.

The teacher that writes instruction data (`hf_llava.datagen`) and the judge of LLaVA-Bench
(`hf_llava.eval`) both see an image as `render_context` writes it, as the paper does: the captions one a
line, then `category: [x1, y1, x2, y2]` with three decimals, normalised to [0, 1]. `record_problem` checks
one record of the original layout (`{"id", "image", "captions": [...], "instances": [{"category", "bbox"}]}`).
"""

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class SymbolicImage:
    """One image as text: `id` (unique), `image` (the file name written to the samples), captions, boxes."""

    id: str
    image: str
    captions: list[str]
    instances: list[dict] = field(default_factory=list)  # [{"category": str, "bbox": [x1, y1, x2, y2]}]


def format_box(bbox: list) -> str:
    """`[x1, y1, x2, y2]` with three decimals, as the paper writes boxes."""
    return "[" + ", ".join(f"{float(v):.3f}" for v in bbox) + "]"


def render_context(image: SymbolicImage) -> str:
    """The text the teacher sees for `image`: captions one a line, a blank line, then one box a line."""
    lines = ["Captions:", *image.captions]
    if image.instances:
        lines += ["", "Objects (category: [x1, y1, x2, y2], normalised to 0-1, origin top left):"]
        lines += [f"{inst['category']}: {format_box(inst['bbox'])}" for inst in image.instances]
    return "\n".join(lines)


def record_problem(record: Any) -> Optional[str]:
    """What is wrong with one JSONL record (None when it is a valid symbolic image)."""
    if not isinstance(record, dict):
        return f"expected an object with id, image, captions, instances, got a {type(record).__name__}"
    for key in ("id", "image", "captions"):
        if key not in record:
            return f"missing field {key!r}"
    if not isinstance(record["id"], (str, int)) or str(record["id"]) == "":
        return "'id' must be a non-empty string or an integer"
    if not isinstance(record["image"], str) or not record["image"]:
        return "'image' must be the image's file name"
    captions = record["captions"]
    if not isinstance(captions, list) or not all(isinstance(c, str) and c.strip() for c in captions):
        return "'captions' must be a list of non-empty strings"
    instances = record.get("instances", [])
    if not isinstance(instances, list):
        return "'instances' must be a list of {category, bbox}"
    if not captions and not instances:
        return "no captions and no instances: the teacher would know nothing of the image"
    for j, inst in enumerate(instances):
        if not isinstance(inst, dict) or not isinstance(inst.get("category"), str) or "bbox" not in inst:
            return f"instance {j}: expected {{'category': str, 'bbox': [x1, y1, x2, y2]}}"
        box = inst["bbox"]
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            return f"instance {j} ({inst['category']}): bbox must be 4 numbers [x1, y1, x2, y2], got {box!r}"
        if not all(0.0 <= v <= 1.0 for v in box):
            return (f"instance {j} ({inst['category']}): box {box} is outside [0, 1]; boxes are normalised "
                    "[x1, y1, x2, y2] (pixel values divided by the image's width and height)")
        if box[0] > box[2] or box[1] > box[3]:
            return f"instance {j} ({inst['category']}): box {box} has x1 > x2 or y1 > y2 (expected [x1, y1, x2, y2])"
    return None


__all__ = ["SymbolicImage", "format_box", "record_problem", "render_context"]
