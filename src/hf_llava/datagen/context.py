"""datagen's inputs: symbolic images (`hf_llava.data.symbolic`) from a captions + boxes JSONL or from COCO.

Reads the original LLaVA layout (JSONL, one image a line: `{"id", "image", "captions": [...], "instances":
[{"category", "bbox": [x1, y1, x2, y2]}]}`, boxes normalised to [0, 1]) or converts COCO annotation files
(pixel `[x, y, w, h]` boxes) to it. Every input problem names the file and the line.
"""

import json
import os

from .._io import listed, read_jsonl
from ..data.symbolic import SymbolicImage, record_problem


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
            f"{captions_path}: {listed(missing)}; pass the captions file of the same split."
        )
    return [SymbolicImage(str(img["id"]), img["file_name"], by_image[img["id"]], boxes.get(img["id"], []))
            for img in images]


__all__ = ["read_coco", "read_symbolic_jsonl"]
