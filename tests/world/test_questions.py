"""Questions in two phrasings: the training data's wordings, and one per type that no training data uses."""

import random

import pytest

from hf_llava.world.questions import QUESTION_TYPES, UNSEEN_PHRASINGS, ask, make_questions
from hf_llava.world.scenes import captions, make_scenes
from hf_llava.world.teacher import WRITERS


def _stem(template: str) -> str:
    """The fixed words of a wording, up to its first blank."""
    return template.split("{")[0].strip() or template


def test_unseen_phrasing_asks_the_same_questions_in_other_words():
    scenes = make_scenes(50, 0, "test")
    images = {s.id: "" for s in scenes}
    seen, unseen = make_questions(scenes, 0, images), make_questions(scenes, 0, images, phrasing="unseen")
    assert [(q["type"], q["answer"]) for q in seen] == [(q["type"], q["answer"]) for q in unseen]
    assert all(a["question"] != b["question"] for a, b in zip(seen, unseen))
    assert {q["type"] for q in unseen} == set(QUESTION_TYPES)
    assert all(q["question"].startswith(_stem(UNSEEN_PHRASINGS[q["type"]])) for q in unseen)
    with pytest.raises(ValueError, match="phrasing"):
        ask(scenes[0].shapes, "count", random.Random(0), phrasing="other")


def test_no_training_text_uses_an_unseen_wording():
    scenes = make_scenes(300, 0, "train")
    texts = [q["question"] for q in make_questions(scenes, 0, {s.id: "" for s in scenes})]
    for scene in scenes:  # the teacher's replies: what stage 2 trains on
        rng = random.Random(scene.id)
        lines = captions(scene, rng)
        texts += lines + [write(lines, list(scene.shapes), rng) for write in WRITERS.values()]
    corpus = "\n".join(texts)
    for kind, template in UNSEEN_PHRASINGS.items():
        assert _stem(template) not in corpus, kind
