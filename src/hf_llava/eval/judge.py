"""The LLaVA-Bench judge: a text-only LM scores the reference answer and the model's answer, 1 to 10 each.

Owns the judge prompt (our own wording, in the protocol's spirit: the image as captions and boxes, the
question, the reference as Assistant 1, the model as Assistant 2, the criteria, both scores on the first
line), the score parser, and the review loop: replies come through a `hf_llava.teachers.Teacher` (whose
client retries 429 / 5xx itself), a reply whose first line is not two scores is asked again (up to
`retries` times), and one that never parses is reported as failed and left out of the averages, never
scored as 0 or -1. Every parsed review is journaled at once, so a killed run resumes without asking again.
"""

import re
from typing import Optional

from ..teachers import Messages, Teacher
from .inputs import CATEGORIES

REVIEW = "review"
JUDGE_SYSTEM = ("You review answers to questions about an image you cannot see. You know the image only from "
                "its description, and you judge fairly, precisely and consistently.")
JUDGE_TASK = """Two AI assistants answered the question above about an image. You cannot see the image: the \
description above (its captions and, when given, its objects with normalised bounding boxes [x1, y1, x2, y2]) is \
what you know about it.
Rate each answer from 1 (poor) to 10 (excellent) overall, weighing how helpful, relevant and accurate it is and \
its level of detail. The order in which the answers appear and their length must not sway you.
On the first line write only the two scores, Assistant 1's first, as two numbers separated by a space (for \
example: 8 6). From the second line on, explain your scores in a few sentences."""
_NUMBER = re.compile(r"^\d+(\.\d+)?$")
_MAX_QUOTED = 80


def judge_messages(context: str, question: str, reference: str, answer: str) -> Messages:
    """The judge's chat: the image as text, the question, the reference (Assistant 1), the model (Assistant 2)."""
    user = (f"[Image description]\n{context}\n\n[Question]\n{question}\n\n"
            f"[Assistant 1]\n{reference}\n[End of Assistant 1]\n\n"
            f"[Assistant 2]\n{answer}\n[End of Assistant 2]\n\n[Task]\n{JUDGE_TASK}")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def parse_scores(review: str) -> tuple[float, float]:
    """`(reference score, model score)` from the review's first non-blank line: two numbers from 1 to 10.

    Separated by spaces and / or a comma ("8 6", "8, 6", "7.5 9"); anything else on the line, or a score
    outside 1-10, raises ValueError quoting the line.
    """
    first = next((line.strip() for line in (review or "").splitlines() if line.strip()), "")
    parts = first.replace(",", " ").split()
    if len(parts) != 2 or not all(_NUMBER.match(p) for p in parts):
        shown = first if len(first) <= _MAX_QUOTED else first[:_MAX_QUOTED] + "..."
        raise ValueError(f"first line {shown!r} is not two scores")
    scores = float(parts[0]), float(parts[1])
    if not all(1 <= s <= 10 for s in scores):
        raise ValueError(f"scores {parts[0]} and {parts[1]} are not both from 1 to 10")
    return scores


def review_all(teacher: Teacher, requests: dict[str, Messages], journal, *, retries: int = 3,
               progress: bool = True) -> tuple[dict[str, dict], dict[str, dict], dict]:
    """Ask `teacher` for every request not yet in `journal` (a started `hf_llava._io.Journal`); `requests`
    `{id: messages}`.

    Returns `(reviews {id: {"reference", "model", "review"}}, failed {id: {"error", "attempts"}}, counts)`
    with `counts` = requests sent (`asked`), re-asked after an unparseable reply (`reasked`), and the
    client's own retries (`client_retries`, 429 / 5xx / timeouts).
    """
    from .._io import Progress

    done = set(journal.results(REVIEW))
    pending = [key for key in requests if key not in done]
    attempts = dict.fromkeys(pending, 0)
    failed: dict[str, dict] = {}
    counts = {"asked": 0, "reasked": 0, "client_retries": 0}
    with Progress(len(requests), "judging", "reviews", initial=len(requests) - len(pending),
                  enabled=progress) as bar:
        while pending:
            keys, pending = pending, []
            for index, reply in teacher.complete_iter(requests[key] for key in keys):
                key = keys[index]
                attempts[key] += 1
                counts["asked"] += 1
                counts["client_retries"] += reply.retries
                problem: Optional[str] = reply.error
                if reply.ok:
                    try:
                        reference, model = parse_scores(reply.text)
                        journal.append(key, REVIEW, {"reference": reference, "model": model, "review": reply.text})
                        bar.update(1)
                        continue
                    except ValueError as err:
                        problem = str(err)
                # The client already retried transport errors; only a reply we could not read is asked again.
                unreadable = reply.ok or problem.startswith("malformed reply")
                if unreadable and attempts[key] <= retries:
                    pending.append(key)
                    counts["reasked"] += 1
                else:
                    failed[key] = {"error": problem, "attempts": attempts[key]}
                    bar.update(1, failed=len(failed))
    reviews = journal.results(REVIEW)
    return reviews, failed, counts


def relative_scores(reviews: dict[str, dict], categories: dict[str, str]) -> dict[str, dict]:
    """Per category and for `all`: `n`, mean `reference` and `model` scores, `relative` = 100 x model / reference.

    `categories` maps each question id to its category; failed reviews are simply absent from `reviews`.
    A category without a review has `n` 0 and None for the rest.
    """
    groups = {name: [] for name in (*CATEGORIES, "all")}
    for key, review in reviews.items():
        if key in categories:
            groups[categories[key]].append(review)
            groups["all"].append(review)
    table = {}
    for name, items in groups.items():
        if not items:
            table[name] = {"relative": None, "reference": None, "model": None, "n": 0}
            continue
        reference = sum(r["reference"] for r in items) / len(items)
        model = sum(r["model"] for r in items) / len(items)
        table[name] = {"relative": 100.0 * model / reference, "reference": reference, "model": model, "n": len(items)}
    return table


__all__ = ["JUDGE_SYSTEM", "JUDGE_TASK", "judge_messages", "parse_scores", "relative_scores", "review_all"]
