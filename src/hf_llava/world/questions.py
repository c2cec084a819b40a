"""Questions about a scene, each with its one right answer and its `type`: the VQA set the demo evaluates on.

`ask(shapes, kind, rng)` writes one question of a type about a list of shapes (a referent is always named
so that exactly one shape fits it: "the circle" only when there is one circle, else "the shape in the top
left"). The evaluation set (`make_questions`) and the offline teacher's conversations both use it: the
teacher on the shapes it reads from the prompt text, the evaluation on held-out scenes.
Short answers are canonical words (`red`, `circle`, `3`, `top left`, `yes`), asked for with LLaVA-1.5's
short-answer instruction, as `hf_llava.eval`'s VQA evaluator asks them; `QA.sentence` is the same answer as
a sentence.
"""

import random
from collections import Counter
from dataclasses import dataclass
from typing import Optional, Sequence

from ..eval.vqa import vqa_prompt
from .scenes import COLOURS, MAX_SHAPES, QUADRANTS, SHAPES, Scene, Shape, count_phrase, with_article

QUESTION_TYPES = ("colour", "shape", "count", "position", "yes/no")
PHRASINGS = ("seen", "unseen")
# One wording per type that the teacher's data, the pretraining text and the prompts never use: asked only at
# evaluation (`phrasing="unseen"`), to see whether a model answers the question or recognises the template.
UNSEEN_PHRASINGS = {
    "colour": "Can you tell me the colour of {ref}?",
    "shape": "What kind of shape is {ref}?",
    "count": "What is the number of shapes in the image?",
    "position": "In which corner of the picture is {ref}?",
    "yes/no": "Does the picture contain {thing}?",
}
ANSWERS = {  # every answer a question of each type can have
    "colour": tuple(COLOURS), "shape": SHAPES, "count": tuple(str(n) for n in range(1, MAX_SHAPES + 1)),
    "position": QUADRANTS, "yes/no": ("yes", "no"),
}


@dataclass(frozen=True)
class QA:
    type: str
    question: str
    answer: str  # the canonical short answer
    sentence: str  # the answer as a sentence

    def short_prompt(self) -> str:
        """The question with the short-answer instruction, as the VQA evaluator words it."""
        return vqa_prompt(self.question)


def _referents(shapes: Sequence[Shape], shape: Shape, by: tuple) -> list[str]:
    """Names that single out `shape` among `shapes`, tried in order `by` (kind, colour, name, quadrant)."""
    names = []
    for key in by:
        if key == "quadrant":
            names.append(f"the shape in the {shape.quadrant}")
        elif sum(getattr(s, key) == getattr(shape, key) for s in shapes) == 1:
            names.append({"kind": f"the {shape.kind}", "colour": f"the {shape.colour} shape",
                          "name": f"the {shape.name}"}[key])
    return names


def _worded(rng: random.Random, seen: list[str], kind: str, phrasing: str, **names: str) -> str:
    """One of the `seen` wordings, or the type's unseen one (the draw happens either way, so that both
    phrasings of a scene's questions ask about the same shape)."""
    wording = rng.choice(seen)
    return wording if phrasing == "seen" else UNSEEN_PHRASINGS[kind].format(**names)


def ask(shapes: Sequence[Shape], kind: str, rng: random.Random, phrasing: str = "seen") -> Optional[QA]:
    """One `kind` question about `shapes` (None when they support none, e.g. `colour` with no shape), worded
    as the training data words it (`phrasing="seen"`) or in the type's held-out wording (`"unseen"`)."""
    if phrasing not in PHRASINGS:
        raise ValueError(f"phrasing={phrasing!r}: expected one of {', '.join(PHRASINGS)}.")
    if not shapes:
        return None
    shape = rng.choice(list(shapes))
    if kind == "colour":
        ref = rng.choice(_referents(shapes, shape, ("kind", "quadrant")))
        question = _worded(rng, [f"What colour is {ref}?", f"What is the colour of {ref}?"], kind, phrasing, ref=ref)
        return QA(kind, question, shape.colour, f"{ref.capitalize()} is {shape.colour}.")
    if kind == "shape":
        ref = rng.choice(_referents(shapes, shape, ("colour", "quadrant")))
        question = _worded(rng, [f"What shape is {ref}?", f"Which shape is {ref}?"], kind, phrasing, ref=ref)
        return QA(kind, question, shape.kind, f"{ref.capitalize()} is {with_article(shape.kind)}.")
    if kind == "count":
        question = _worded(rng, ["How many shapes are there?", "How many shapes are in the picture?"], kind, phrasing)
        n = len(shapes)
        return QA(kind, question, str(n), f"There {'is' if n == 1 else 'are'} {count_phrase(n)}.")
    if kind == "position":
        named = [(s, n) for s in shapes if (n := _referents(shapes, s, ("name", "kind", "colour")))]
        if not named:  # e.g. two red circles and nothing else
            return None
        shape, names = rng.choice(named)
        ref = rng.choice(names)
        question = _worded(rng, [f"Where is {ref}?", f"In which part of the picture is {ref}?"], kind, phrasing,
                           ref=ref)
        return QA(kind, question, shape.quadrant, f"{ref.capitalize()} is in the {shape.quadrant}.")
    if kind == "yes/no":
        return _yes_no(shapes, shape, rng, phrasing)
    raise ValueError(f"kind={kind!r}: expected one of {', '.join(QUESTION_TYPES)}.")


def _yes_no(shapes: Sequence[Shape], shape: Shape, rng: random.Random, phrasing: str) -> QA:
    """Half the time a shape that is there, else a near miss: its colour with another kind, or the reverse."""
    present = {s.name for s in shapes}
    if rng.random() < 0.5:
        colour, kind = shape.colour, shape.kind
    else:
        misses = [(c, shape.kind) for c in COLOURS if f"{c} {shape.kind}" not in present]
        misses += [(shape.colour, k) for k in SHAPES if f"{shape.colour} {k}" not in present]
        colour, kind = rng.choice(misses)
    thing = with_article(f"{colour} {kind}")
    question = _worded(rng, [f"Is there {thing}?", f"Is there {thing} in the picture?"], "yes/no", phrasing,
                       thing=thing)
    if f"{colour} {kind}" in present:
        where = next(s.quadrant for s in shapes if s.name == f"{colour} {kind}")
        return QA("yes/no", question, "yes", f"Yes, there is {thing} in the {where}.")
    return QA("yes/no", question, "no", f"No, there is no {colour} {kind} in the picture.")


def make_questions(scenes: Sequence[Scene], seed: int, images: dict, phrasing: str = "seen") -> list[dict]:
    """One question of each type per scene (a type the scene cannot support is skipped), without the
    short-answer instruction (the evaluator adds it); `phrasing="unseen"` asks the same questions in the
    held-out wordings. Returns `[{"question_id", "image", "question", "answer",
    "type"}]`; `images` maps scene id -> image path.
    """
    rows = []
    for scene in scenes:
        rng = random.Random(f"questions:{seed}:{scene.id}")
        for kind in QUESTION_TYPES:
            qa = ask(scene.shapes, kind, rng, phrasing)
            if qa is not None:
                suffix = "" if phrasing == "seen" else f"-{phrasing}"
                rows.append({"question_id": f"{scene.id}-{len(rows)}{suffix}", "image": images[scene.id],
                             "question": qa.question, "answer": qa.answer, "type": kind})
    return rows


def chance_accuracy(questions: Sequence[dict]) -> float:
    """The expected accuracy of guessing uniformly among each question type's possible answers."""
    return sum(1 / len(ANSWERS[q["type"]]) for q in questions) / max(1, len(questions))


def majority_answers(questions: Sequence[dict]) -> dict[str, str]:
    """Each question type's most common answer in `questions` (ties: the answer met first)."""
    by_type: dict[str, Counter] = {}
    for q in questions:
        by_type.setdefault(q["type"], Counter())[q["answer"]] += 1
    return {kind: counts.most_common(1)[0][0] for kind, counts in by_type.items()}


def majority_accuracy(questions: Sequence[dict], answers: Optional[dict] = None) -> float:
    """What a blind guesser scores that always gives each type's answer in `answers` (`majority_answers` of
    the training questions, for an honest baseline; default: of `questions` themselves, an upper bound)."""
    answers = majority_answers(questions) if answers is None else answers
    return sum(q["answer"] == answers.get(q["type"]) for q in questions) / max(1, len(questions))


__all__ = ["ANSWERS", "PHRASINGS", "QA", "QUESTION_TYPES", "UNSEEN_PHRASINGS", "ask", "chance_accuracy",
           "majority_accuracy", "majority_answers", "make_questions"]
