"""The symbolic image: what a text-only teacher knows of a picture (its captions and its boxes).

Reads the original LLaVA layout (JSONL, one image a line: `{"id", "image", "captions": [...], "instances":
[{"category", "bbox": [x1, y1, x2, y2]}]}`, boxes normalised to [0, 1]) or converts COCO annotation files
(pixel `[x, y, w, h]` boxes) to it, and renders it as the paper writes it: the captions one a line, then
`category: [x1, y1, x2, y2]` with three decimals. Every input problem names the file and the line.
"""

import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

_MAX_LISTED = 5


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


def read_jsonl(path, flag: str) -> list[tuple[int, dict]]:
    """`(line number, object)` for each non-blank line of a JSONL file; `flag` names the file in errors."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag}={path}: no such file; pass a JSONL file (one JSON object a line).")
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{flag}={path}, line {line_no}: not valid JSON ({err.msg}); "
                                 "one object a line.") from None
            if not isinstance(record, dict):
                raise ValueError(f"{flag}={path}, line {line_no}: expected a JSON object, got a "
                                 f"{type(record).__name__}.")
            records.append((line_no, record))
    if not records:
        raise ValueError(f"{flag}={path}: no records (the file is empty).")
    return records


def read_symbolic_jsonl(path: str) -> list[SymbolicImage]:
    """The images of a LLaVA captions + boxes JSONL file; a bad line raises ValueError naming file and line."""
    images, seen = [], {}
    for line_no, record in read_jsonl(path, "input"):
        problem = record_problem(record)
        if problem:
            raise ValueError(f"input={path}, line {line_no}: {problem}.")
        image_id = str(record["id"])
        if image_id in seen:
            raise ValueError(f"input={path}, line {line_no}: id {image_id!r} repeats line {seen[image_id]}; "
                             "ids name the samples and must be unique.")
        seen[image_id] = line_no
        instances = [{"category": i["category"], "bbox": [float(v) for v in i["bbox"]]}
                     for i in record.get("instances", [])]
        images.append(SymbolicImage(image_id, record["image"], list(record["captions"]), instances))
    return images


def _load_coco(path: str, flag: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag}={path}: no such file; pass a COCO annotation JSON.")
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{flag}={path}: not valid JSON (line {err.lineno}: {err.msg}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{flag}={path}: not a COCO annotation file (no 'annotations' list).")
    return data


def _listed(ids: list) -> str:
    more = f" (+{len(ids) - _MAX_LISTED} more)" if len(ids) > _MAX_LISTED else ""
    return ", ".join(str(i) for i in ids[:_MAX_LISTED]) + more


def read_coco(instances_path: str, captions_path: str) -> list[SymbolicImage]:
    """COCO `instances_*.json` + `captions_*.json` -> symbolic images, boxes normalised by each image's size.

    Every image of the instances file needs captions in the captions file (else ValueError naming both
    files and the image ids); crowd annotations are left out, as in the paper.
    """
    instances = _load_coco(os.fspath(instances_path), "coco_instances")
    captions = _load_coco(os.fspath(captions_path), "coco_captions")
    images = instances.get("images")
    categories = {c["id"]: c["name"] for c in instances.get("categories", [])}
    if not isinstance(images, list) or not categories:
        raise ValueError(f"coco_instances={instances_path}: not a COCO instances file (needs 'images' and "
                         "'categories'); pass instances_*.json, and the captions file to --coco-captions.")
    by_image: dict = {}
    for ann in captions["annotations"]:
        if "caption" not in ann:
            raise ValueError(f"coco_captions={captions_path}: annotation {ann.get('id')} has no 'caption'; "
                             "pass a COCO captions_*.json file.")
        by_image.setdefault(ann["image_id"], []).append(" ".join(ann["caption"].split()))
    try:
        return _convert_coco(images, categories, instances["annotations"], by_image, instances_path, captions_path)
    except KeyError as err:
        raise ValueError(f"coco_instances={instances_path}: an image or annotation has no field {err}; pass a "
                         "COCO instances_*.json file.") from None


def _convert_coco(images, categories, annotations, by_image, instances_path, captions_path) -> list[SymbolicImage]:
    known = {img["id"]: img for img in images}
    boxes: dict = {}
    for ann in annotations:
        if ann.get("iscrowd"):
            continue
        img = known.get(ann["image_id"])
        if img is None:
            raise ValueError(f"coco_instances={instances_path}: annotation {ann.get('id')} refers to image id "
                             f"{ann['image_id']}, which is not in its 'images' list.")
        x, y, w, h = ann["bbox"]
        width, height = img["width"], img["height"]
        box = [x / width, y / height, (x + w) / width, (y + h) / height]
        # COCO boxes may overhang the image by a fraction of a pixel.
        box = [min(1.0, max(0.0, v)) for v in box]
        category = categories.get(ann["category_id"])
        if category is None:
            raise ValueError(f"coco_instances={instances_path}: annotation {ann.get('id')} has category id "
                             f"{ann['category_id']}, which is not in its 'categories' list.")
        boxes.setdefault(img["id"], []).append({"category": category, "bbox": box})
    missing = [img["id"] for img in images if img["id"] not in by_image]
    if missing:
        raise ValueError(
            f"coco_instances={instances_path}: {len(missing)} image id(s) have no captions in coco_captions="
            f"{captions_path}: {_listed(missing)}; pass the captions file of the same split."
        )
    return [SymbolicImage(str(img["id"]), img["file_name"], by_image[img["id"]], boxes.get(img["id"], []))
            for img in images]


__all__ = ["SymbolicImage", "format_box", "read_coco", "read_jsonl", "read_symbolic_jsonl", "record_problem", "render_context"]
