"""The offline teacher: replies datagen's parsers accept, written from the prompt text alone."""

import json

import pytest

from hf_llava.datagen import TYPES, SymbolicImage, generate, load_prompts, parse_reply, render_context
from hf_llava.eval import normalize_answer
from hf_llava.world.questions import ANSWERS
from hf_llava.world.scenes import instances, make_scenes, write_scenes
from hf_llava.world.teacher import WorldTeacher

# What datagen renders for a picture nobody drew: one small blue square in the top right.
CONTEXT = ("Captions:\nA small blue square in the top right.\n\n"
           "Objects (category: [x1, y1, x2, y2], normalised to 0-1, origin top left):\n"
           "blue square: [0.600, 0.100, 0.850, 0.350]")


@pytest.fixture(scope="module")
def prompts():
    return load_prompts(list(TYPES))


def _reply(prompts, kind: str, context: str = CONTEXT, seed: int = 0) -> str:
    reply = WorldTeacher(seed=seed).reply(prompts[kind].messages(context))
    assert reply.ok, reply.error
    return reply.text


def _short_answers(turns: list[dict]) -> dict[str, str]:
    """{question: answer} for the short-answer questions of a conversation."""
    pairs = [(q["value"].replace("<image>", "").strip(), a["value"]) for q, a in zip(turns[::2], turns[1::2])]
    return {q.split("\n")[0]: a for q, a in pairs if "\n" in q}


def test_every_reply_is_in_the_format_its_parser_accepts(prompts):
    for scene in make_scenes(30, seed=3, prefix="teacher"):
        context = render_context(SymbolicImage(scene.id, "x.png", ["A picture of shapes."], instances(scene)))
        for kind in TYPES:
            turns = parse_reply(kind, _reply(prompts, kind, context))  # raises ReplyRejected otherwise
            assert turns and all(t["value"].strip() for t in turns)


def test_answers_come_from_the_boxes_in_the_prompt_text(prompts):
    answers = _short_answers(parse_reply("conversation", _reply(prompts, "conversation")))
    for question, answer in answers.items():
        assert normalize_answer(answer) in {normalize_answer(a) for a in sum(map(list, ANSWERS.values()), [])}
        if question.startswith("How many"):
            assert answer == "1"
        if question.startswith(("Where", "In which part")):
            assert answer == "top right"  # from the box's centre, not from the caption
        if question.startswith(("What colour", "What is the colour")):
            assert answer == "blue"
    detail = _reply(prompts, "detail")
    assert "top right there is a small blue square" in detail
    moved = CONTEXT.replace("[0.600, 0.100, 0.850, 0.350]", "[0.100, 0.600, 0.350, 0.850]")
    assert "bottom left there is a small blue square" in _reply(prompts, "detail", moved)


def test_the_same_prompt_gets_the_same_reply_and_the_seed_changes_it(prompts):
    assert _reply(prompts, "conversation") == _reply(prompts, "conversation")
    replies = {_reply(prompts, "conversation", seed=s) for s in range(5)}
    assert len(replies) > 1


def test_requests_outside_the_world_are_errors_not_replies(prompts):
    teacher = WorldTeacher()
    unknown = teacher.reply(prompts["detail"].messages(CONTEXT.replace("blue square:", "dog:")))
    assert not unknown.ok and "dog" in unknown.error
    unasked = teacher.reply([{"role": "system", "content": "Translate to French."},
                             {"role": "user", "content": CONTEXT}])
    assert not unasked.ok


def test_datagen_pipeline_with_the_teacher_writes_llava_json(tmp_path):
    scenes = make_scenes(12, seed=0, prefix="teacher")
    source = write_scenes(scenes, tmp_path / "world")
    summary = generate(WorldTeacher(), tmp_path / "instruct.json", input=str(source), progress=False)
    assert summary.total.generated == 12 * len(TYPES) and summary.total.rejected == summary.total.failed == 0
    samples = json.loads((tmp_path / "instruct.json").read_text())
    assert {s["image"] for s in samples} == {f"images/{s.id}.png" for s in scenes}
    counts = {s.id: len(s.shapes) for s in scenes}
    checked = 0
    for sample in samples:
        if sample["id"].endswith("_conversation"):
            asked = _short_answers(sample["conversations"])
            for question, answer in asked.items():
                if question.startswith("How many"):
                    assert answer == str(counts[sample["id"].rsplit("_", 1)[0]])
            checked += any(q.startswith("How many") for q in asked)
    assert checked > 3
