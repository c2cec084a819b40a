"""Evaluation inputs: JSONL readers for questions, reference answers and image contexts, and the image check.

Every problem is found before any model or judge time is spent, and its message names the file (in the
`flag=PATH` spelling the CLI turns into `--flag PATH`), the line and the question id. A question is kept
as a plain dict (`question_id`, `text`, `image`, `category`, plus the fields its benchmark needs), so the
same records serve the file-based runs and the in-process API (`evaluate_vqa`...).
"""

import os
from pathlib import Path
from typing import Any, Iterable, Optional

from .._io import listed, read_jsonl
from ..data.symbolic import SymbolicImage, record_problem, render_context

CATEGORIES = ("conv", "detail", "complex")  # LLaVA-Bench: conversation, detailed description, complex reasoning


def _text(record: dict, keys: tuple, where: str) -> str:
    for key in keys:
        if isinstance(record.get(key), str) and record[key].strip():
            return record[key]
    raise ValueError(f"{where}: no {' or '.join(repr(k) for k in keys)} (a non-empty string).")


def check_questions(records: Iterable[dict], where: str = "questions", text_keys: tuple = ("text", "question"),
                    image_required: bool = False) -> list[dict]:
    """Normalised question dicts: `question_id` (kept as given), `text`, `image` (or None), `category`.

    `records` are dicts, optionally with `_where` (their file and line) for messages; ids must be unique.
    Other fields are kept as they are (`answers`, `choices`...). With `image_required`, a question without
    an image is an error: a benchmark about images never scores one as a text-only question.
    """
    questions, seen = [], {}
    for index, record in enumerate(records):
        at = record.get("_where") or f"{where}, question {index}"
        qid = record.get("question_id", record.get("id"))
        if qid is None or isinstance(qid, (bool, list, dict)) or str(qid) == "":
            raise ValueError(f"{at}: no 'question_id' (a string or a number).")
        at = f"{at} (question_id {qid})"
        if str(qid) in seen:
            raise ValueError(f"{at}: question_id repeats {seen[str(qid)]}; ids must be unique.")
        seen[str(qid)] = record.get("_where") or f"question {index}"
        image = record.get("image")
        if isinstance(image, str) and not image.strip():
            image = None
        if isinstance(image, (bool, int, float, list, dict)):
            raise ValueError(f"{at}: 'image' must be the image's file name, got {image!r}.")
        if image is None and image_required:
            raise ValueError(f"{at}: no 'image'; every question of this benchmark is about an image: add the "
                             "image's file name (relative to images=DIR), or leave the question out.")
        category = record.get("category", record.get("type"))
        question = {k: v for k, v in record.items() if k != "_where"}
        question.update(question_id=qid, text=_text(record, text_keys, at), image=image,
                        category=None if category is None else str(category), _where=at)
        questions.append(question)
    if not questions:
        raise ValueError(f"{where}: no questions.")
    return questions


def read_questions(path, flag: str = "questions") -> list[dict]:
    """The records of a questions JSONL, each with `_where` (its file and line) for `check_questions`."""
    return [{**record, "_where": f"{flag}={os.fspath(path)}, line {line_no}"}
            for line_no, record in read_jsonl(path, flag)]


def check_categories(questions: list[dict], allowed: tuple = CATEGORIES) -> None:
    for q in questions:
        if q["category"] not in allowed:
            raise ValueError(f"{q['_where']}: category {q['category']!r} is not one of {', '.join(allowed)}.")


def resolve_image(image: Any, images_root: Optional[os.PathLike]) -> Any:
    """A file name -> its path under `images_root` (absolute paths kept); anything else (a PIL image) as is."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        return path if path.is_absolute() or images_root is None else Path(images_root) / path
    return image


def check_images(questions: list[dict], images_root, flag: str = "images") -> None:
    """Every image file a question names exists under `images_root` (FileNotFoundError naming them)."""
    if images_root is not None and not Path(images_root).is_dir():
        raise FileNotFoundError(f"{flag}={os.fspath(images_root)}: no such folder; pass the folder of the images.")
    missing = []
    for q in questions:
        path = resolve_image(q["image"], images_root)
        if isinstance(path, Path) and not path.is_file():
            missing.append(f"{path} (question_id {q['question_id']})")
    if missing:
        raise FileNotFoundError(f"{flag}={images_root}: {len(missing)} image file(s) missing: {listed(missing)}; "
                                "pass the folder that holds them.")


def read_references(path, questions: list[dict], flag: str = "references") -> dict[str, str]:
    """`{question_id: reference answer text}`; every question needs one (ValueError naming the ids)."""
    references = {}
    for line_no, record in read_jsonl(path, flag):
        at = f"{flag}={os.fspath(path)}, line {line_no}"
        if "question_id" not in record:
            raise ValueError(f"{at}: no 'question_id'.")
        references[str(record["question_id"])] = _text(record, ("text",), f"{at} (question_id "
                                                                            f"{record['question_id']})")
    missing = [q["question_id"] for q in questions if str(q["question_id"]) not in references]
    if missing:
        raise ValueError(f"{flag}={os.fspath(path)}: no reference answer for question_id {listed(missing)}; "
                         "pass the reference answers of these questions.")
    return references


def read_contexts(path, questions: list[dict], flag: str = "context") -> dict[str, str]:
    """`{image: the judge's text of it}` from a context JSONL keyed by `image`, rendered as datagen's teacher
    sees an image (`hf_llava.data.symbolic`).

    A line holds either `captions` + `instances` (normalised `[x1, y1, x2, y2]` boxes, the COCO set) or a
    `caption` string or list (the in-the-wild set); every question's image needs one.
    """
    contexts = {}
    for line_no, record in read_jsonl(path, flag):
        at = f"{flag}={os.fspath(path)}, line {line_no}"
        if not isinstance(record.get("image"), str) or not record["image"]:
            raise ValueError(f"{at}: no 'image' (the image's file name, as in the questions).")
        symbolic = {"id": record["image"], **record}
        if "captions" not in record and "caption" in record:
            caption = record["caption"]
            symbolic["captions"] = caption if isinstance(caption, list) else [caption]
        problem = record_problem(symbolic)
        if problem:
            raise ValueError(f"{at}: {problem}.")
        image = SymbolicImage(str(symbolic["id"]), record["image"], list(symbolic["captions"]),
                              symbolic.get("instances", []))
        contexts[record["image"]] = render_context(image)
    missing = [f"{q['image']} (question_id {q['question_id']})" for q in questions if q["image"] not in contexts]
    if missing:
        raise ValueError(f"{flag}={os.fspath(path)}: no context for image {listed(missing)}; pass the captions "
                         "and boxes file of these images.")
    return contexts


__all__ = ["CATEGORIES", "check_categories", "check_images", "check_questions", "read_contexts", "read_questions",
           "read_references", "resolve_image"]
