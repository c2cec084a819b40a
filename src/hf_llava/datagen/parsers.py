"""Teacher replies -> LLaVA turns, one parser per type; anything else is rejected with a reason.

Reply formats (the prompts' few-shot answers are written in them, and are checked with these parsers):
- conversation: `Question: ...` / `Answer: ...` blocks, alternating, at least one pair;
- complex: exactly one `Question:` / `Answer:` pair (the answer reasons step by step);
- detail: the description alone, as plain prose (at least `MIN_DETAIL_WORDS` words).
Every type rejects an empty reply, a refusal, and a reply that quotes box coordinates (the trained model
sees pixels, not boxes), or `<image>`. Turns come back without `<image>`; the runner places it.
"""

import re

from ..data.llava_json import IMAGE_PLACEHOLDER

TYPES = ("conversation", "detail", "complex")
MIN_DETAIL_WORDS = 15
# Line-start markers; markdown emphasis around them ("**Question:**", "## Answer:") is common and harmless.
_MARKER = re.compile(r"^[ \t]*(?:[*#]+[ \t]*)?(Question|Answer)(?:\*\*)?[ \t]*:(?:\*\*)?[ \t]*",
                     re.MULTILINE | re.IGNORECASE)
# "[0.12, 0.30" or a bare 0.123 / 1.000: the way boxes are written in the prompt.
_COORDINATES = re.compile(r"\[\s*[01]?\.\d+\s*,|\b[01]\.\d{3}\b")
_REFUSALS = ("i'm sorry", "i am sorry", "sorry,", "i cannot", "i can't", "i can not", "as an ai", "i'm unable",
             "i am unable", "unfortunately, i", "i apologize")


class ReplyRejected(ValueError):
    """A teacher reply that cannot become a sample; the message says why."""


def _check_common(text: str) -> str:
    text = (text or "").strip()
    if not text:
        raise ReplyRejected("empty reply")
    if text.lower().lstrip("*\"' ").startswith(_REFUSALS):
        raise ReplyRejected(f"refusal: {text[:60]!r}")
    if IMAGE_PLACEHOLDER in text:
        raise ReplyRejected(f"contains {IMAGE_PLACEHOLDER} (the runner places the image)")
    found = _COORDINATES.search(text)
    if found:
        raise ReplyRejected(f"quotes box coordinates ({found.group(0)!r})")
    return text


def _qa_pairs(text: str) -> list[tuple[str, str]]:
    """`Question:` / `Answer:` blocks -> [(question, answer)]; ReplyRejected when not in that format."""
    marks = list(_MARKER.finditer(text))
    if not marks:
        raise ReplyRejected("not in the format: no 'Question:' / 'Answer:' lines")
    if text[:marks[0].start()].strip():
        raise ReplyRejected(f"not in the format: text before the first 'Question:' ({text[:40]!r})")
    blocks = []
    for k, mark in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(text)
        blocks.append((mark.group(1).lower(), text[mark.end():end].strip()))
    if len(blocks) % 2 or any(kind != ("question", "answer")[j % 2] for j, (kind, _) in enumerate(blocks)):
        raise ReplyRejected("not in the format: 'Question:' and 'Answer:' must alternate, starting with a question "
                            "and ending with an answer")
    if any(not body for _, body in blocks):
        raise ReplyRejected("not in the format: an empty question or answer")
    return [(blocks[j][1], blocks[j + 1][1]) for j in range(0, len(blocks), 2)]


def _turns(pairs: list[tuple[str, str]]) -> list[dict]:
    return [turn for q, a in pairs for turn in ({"from": "human", "value": q}, {"from": "gpt", "value": a})]


def parse_conversation(text: str) -> list[dict]:
    return _turns(_qa_pairs(_check_common(text)))


def parse_complex(text: str) -> list[dict]:
    pairs = _qa_pairs(_check_common(text))
    if len(pairs) != 1:
        raise ReplyRejected(f"not in the format: expected one question and its answer, got {len(pairs)} pairs")
    return _turns(pairs)


def parse_detail(text: str) -> list[dict]:
    """The description as one gpt turn (its human instruction is added by the runner)."""
    text = _check_common(text)
    if _MARKER.search(text):
        raise ReplyRejected("not in the format: a description was expected, got 'Question:' / 'Answer:' lines")
    words = len(text.split())
    if words < MIN_DETAIL_WORDS:
        raise ReplyRejected(f"too short for a detailed description ({words} words, at least {MIN_DETAIL_WORDS})")
    return [{"from": "gpt", "value": text}]


PARSERS = {"conversation": parse_conversation, "detail": parse_detail, "complex": parse_complex}


def parse_reply(kind: str, text: str) -> list[dict]:
    """The LLaVA turns in a `kind` reply (`{"from": "human"|"gpt", "value"}`), or ReplyRejected."""
    return PARSERS[kind](text)


def check_types(types) -> list[str]:
    """`types` (a list or "a,b") as a list of known types, in order, without repeats; ValueError otherwise."""
    names = [t.strip() for t in (types.split(",") if isinstance(types, str) else types)]
    unknown = [t for t in names if t not in TYPES]
    if unknown or not names:
        raise ValueError(f"types={','.join(names)}: unknown type {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"expected a comma-separated list of {', '.join(TYPES)}.")
    return list(dict.fromkeys(names))


__all__ = ["MIN_DETAIL_WORDS", "PARSERS", "ReplyRejected", "TYPES", "check_types", "parse_complex",
           "parse_conversation", "parse_detail", "parse_reply"]
