"""The offline teacher: like GPT-4 in the paper, it reads only the prompt text, never the image.

`WorldTeacher` answers datagen's requests for the demo's world. From each request it reads what was asked
(the system message: a conversation, a detailed description or a complex-reasoning question) and what is
known of the picture (the last user message, as `hf_llava.datagen.render_context` writes it: the captions,
then one `category: [x1, y1, x2, y2]` line per object). It works out each shape's colour and kind from the
category, and its place and size from the box, as GPT-4 does from COCO's boxes; then it writes the reply in
the format datagen's parsers accept. Its choices are seeded by (seed, prompt text): the same request gets
the same reply, so a resumed run is consistent.
"""

import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator

from ..teachers import BaseTeacher, Messages, TeacherReply
from .questions import QUESTION_TYPES, ask
from .scenes import COLOURS, QUADRANTS, SHAPES, Shape, count_phrase, describe_shape, listing, quadrant_of, size_of

_BOX_LINE = re.compile(r"^(?P<category>[^:\n]+):\s*\[(?P<numbers>[^\]]*)\]\s*$")
_SHORT_SHARE = 0.75  # of conversation questions asked in LLaVA-1.5's short-answer style


class UnknownRequest(ValueError):
    """A request this teacher cannot answer (an unknown task or object category); the message says why."""


def read_task(system: str) -> str:
    """Which reply the instructions ask for: `conversation`, `complex` or `detail`."""
    text = system.lower()
    if "conversation" in text:
        return "conversation"
    if "ask one question" in text:
        return "complex"
    if "describe" in text:
        return "detail"
    raise UnknownRequest("the instructions ask for neither a conversation, a description nor one question")


def read_context(text: str) -> tuple[list[str], list[Shape]]:
    """`(captions, shapes)` from a rendered context: captions up to the first blank line, then box lines."""
    lines = text.splitlines()
    captions = []
    for line in lines[1:] if lines and lines[0].rstrip().endswith(":") else lines:
        if not line.strip():
            break
        captions.append(line.strip())
    shapes = []
    for line in lines:
        match = _BOX_LINE.match(line.strip())
        if not match:
            continue
        words = match["category"].split()
        box = tuple(float(v) for v in match["numbers"].split(","))
        if len(words) != 2 or words[0] not in COLOURS or words[1] not in SHAPES or len(box) != 4:
            raise UnknownRequest(f"unknown object {line.strip()!r} (expected '<colour> <shape>: [x1, y1, x2, y2]')")
        shapes.append(Shape(words[0], words[1], size_of(box), quadrant_of(box), box))
    if not shapes:
        raise UnknownRequest("the context lists no objects")
    return captions, sorted(shapes, key=lambda s: QUADRANTS.index(s.quadrant))


def write_conversation(captions: list[str], shapes: list[Shape], rng: random.Random) -> str:
    """One question of each type in a random order, then one more; most in the short-answer style."""
    kinds = rng.sample(QUESTION_TYPES, len(QUESTION_TYPES)) + [rng.choice(QUESTION_TYPES)]
    pairs, asked = [], set()
    for kind in kinds:
        qa = ask(shapes, kind, rng)
        if qa is None or qa.question in asked:
            continue
        asked.add(qa.question)
        if rng.random() < _SHORT_SHARE:
            pairs.append(f"Question: {qa.short_prompt()}\nAnswer: {qa.answer}")
        else:
            pairs.append(f"Question: {qa.question}\nAnswer: {qa.sentence}")
    return "\n".join(pairs)


def _place(shape: Shape) -> str:
    return f"In the {shape.quadrant} there is {describe_shape(shape)}."


def write_detail(captions: list[str], shapes: list[Shape], rng: random.Random) -> str:
    """The captions' overview, each shape in its place, and what is left empty."""
    overview = next((c for c in captions if "background" in c), captions[0] if captions else "")
    empty = [q for q in QUADRANTS if q not in {s.quadrant for s in shapes}]
    if empty:
        ending = f"The {listing(empty)} {'is' if len(empty) == 1 else 'are'} empty."
    else:
        ending = "Every quadrant of the picture holds a shape."
    return " ".join(part for part in (overview, *(_place(s) for s in shapes), ending) if part)


def _removal(shapes: list[Shape], rng: random.Random) -> str:
    gone = rng.choice(shapes)
    rest = [s for s in shapes if s is not gone]
    left = f"{count_phrase(len(rest))}: {listing([describe_shape(s) for s in rest])}" if rest else "no shape at all"
    return (f"Question: If the shape in the {gone.quadrant} were taken away, how many shapes would be left?\n"
            f"Answer: The picture shows {count_phrase(len(shapes))}. The one in the {gone.quadrant} is "
            f"{describe_shape(gone)}. Taking it away leaves {left}.")


def _free_place(shapes: list[Shape], rng: random.Random) -> str:
    taken = [s.quadrant for s in shapes]
    free = [q for q in QUADRANTS if q not in taken]
    answer = (f"the {listing(free)} {'is' if len(free) == 1 else 'are'} still free, so it could go there"
              if free else "no quadrant is free, so it would have to share one")
    return (f"Question: Where could one more shape go without sharing a quadrant with another shape?\n"
            f"Answer: Each shape sits in its own quadrant. The {listing(taken)} "
            f"{'is' if len(taken) == 1 else 'are'} taken; {answer}.")


def _shared_colour(shapes: list[Shape], rng: random.Random) -> str:
    counts = Counter(s.colour for s in shapes)
    shared = [c for c, n in counts.items() if n > 1]
    colours = listing([f"the {s.kind} in the {s.quadrant} is {s.colour}" for s in shapes])
    verdict = (f"so the {listing(shared)} shapes share a colour" if shared
               else "so every shape has a colour of its own")
    return ("Question: Do any two shapes in the picture have the same colour?\n"
            f"Answer: Looking at each one, {colours}; {verdict}.")


def write_complex(captions: list[str], shapes: list[Shape], rng: random.Random) -> str:
    """One question that takes a few steps of reasoning about the shapes, answered step by step."""
    return rng.choice((_removal, _free_place, _shared_colour))(shapes, rng)


WRITERS = {"conversation": write_conversation, "detail": write_detail, "complex": write_complex}


class WorldTeacher(BaseTeacher):
    """A text-only teacher for the demo's world: replies written from the prompt's captions and boxes."""

    name = "world-teacher"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def reply(self, messages: Messages) -> TeacherReply:
        """The reply to one request, or a `TeacherReply` with `error` when the request is not about this world."""
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        context = messages[-1]["content"] if messages and messages[-1]["role"] == "user" else ""
        try:
            task = read_task(system)
            captions, shapes = read_context(context)
        except UnknownRequest as error:
            return TeacherReply(error=str(error))
        rng = random.Random(f"{self.seed}:{task}:{context}")
        return TeacherReply(text=WRITERS[task](captions, shapes, rng))

    def complete_iter(self, requests: Iterable[Messages]) -> Iterator[tuple[int, TeacherReply]]:
        for index, messages in enumerate(requests):
            yield index, self.reply(messages)


__all__ = ["UnknownRequest", "WRITERS", "WorldTeacher", "read_context", "read_task"]
