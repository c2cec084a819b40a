"""The world's scenes: pictures, captions and boxes tell the same story, in datagen's input layout."""

import json
import random

import numpy as np
import pytest
from PIL import Image

from hf_llava.datagen import read_images
from hf_llava.world.questions import QUESTION_TYPES, chance_accuracy, majority_accuracy, make_questions
from hf_llava.world.scenes import (COLOURS, IMAGE_SIZE, MAX_SHAPES, QUADRANTS, captions, draw, make_scenes,
                                   quadrant_of, size_of, write_scenes)


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(200, seed=0, prefix="test")


def test_scenes_are_reproducible_and_seeded(scenes):
    assert make_scenes(200, seed=0, prefix="test") == scenes
    assert make_scenes(200, seed=1, prefix="test") != scenes
    assert make_scenes(5, seed=0, prefix="train") != scenes[:5]  # splits never share scenes


def test_every_shape_has_its_own_quadrant_and_its_box_says_where_and_how_big(scenes):
    counts = set()
    for scene in scenes:
        counts.add(len(scene.shapes))
        assert len({s.quadrant for s in scene.shapes}) == len(scene.shapes)
        for shape in scene.shapes:
            x1, y1, x2, y2 = shape.bbox
            assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
            assert quadrant_of(shape.bbox) == shape.quadrant
            assert size_of(shape.bbox) == shape.size
    assert counts == set(range(1, MAX_SHAPES + 1))


def _centre_colour(image: Image.Image, shape) -> np.ndarray:
    x1, y1, x2, y2 = (v * image.width for v in shape.bbox)
    # the centroid of a triangle with its apex up sits two thirds of the way down
    cy = y1 + (y2 - y1) * (2 / 3 if shape.kind == "triangle" else 1 / 2)
    return np.asarray(image, dtype=float)[int(cy), int((x1 + x2) / 2)]


def test_the_picture_shows_each_shape_in_its_colour_and_leaves_the_other_quadrants_grey(scenes):
    for scene in scenes[:40]:
        image = draw(scene)
        assert image.size == (IMAGE_SIZE, IMAGE_SIZE)
        for shape in scene.shapes:
            distances = {name: np.abs(_centre_colour(image, shape) - rgb).sum() for name, rgb in COLOURS.items()}
            assert min(distances, key=distances.get) == shape.colour, (scene.id, shape)
        pixels = np.asarray(image, dtype=float)
        half = IMAGE_SIZE // 2
        for quadrant in set(QUADRANTS) - {s.quadrant for s in scene.shapes}:
            row, col = quadrant.split()
            block = pixels[(row == "bottom") * half:][:half, (col == "right") * half:][:, :half]
            assert np.ptp(block.mean(axis=(0, 1))) < 3  # grey: no colour in an empty quadrant


def test_captions_name_every_shape_its_place_and_the_count(scenes):
    scene = next(s for s in scenes if len(s.shapes) == 3)
    lines = captions(scene, random.Random(0))
    for shape in scene.shapes:
        assert f"{shape.size} {shape.colour} {shape.kind} in the {shape.quadrant}" in lines[0]
    assert lines[1].startswith("Three shapes")


def test_written_scenes_are_the_datagen_input_layout(tmp_path, scenes):
    path = write_scenes(scenes[:5], tmp_path / "split")
    symbolic = read_images(input=str(path))  # datagen's own reader validates the layout
    assert [s.id for s in symbolic] == [s.id for s in scenes[:5]]
    for record, scene in zip(symbolic, scenes):
        assert Image.open(tmp_path / "split" / record.image).size == (IMAGE_SIZE, IMAGE_SIZE)
        assert [i["category"] for i in record.instances] == [s.name for s in scene.shapes]
        assert [tuple(i["bbox"]) for i in record.instances] == [s.bbox for s in scene.shapes]
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) == {"id", "image", "captions", "instances"}


def test_questions_have_one_right_answer_per_type_and_chance_is_low(scenes):
    questions = make_questions(scenes, seed=0, images={s.id: f"{s.id}.png" for s in scenes})
    assert {q["type"] for q in questions} == set(QUESTION_TYPES)
    assert len({q["question_id"] for q in questions}) == len(questions)
    by_id = {s.id: s for s in scenes}
    for q in questions:
        scene = by_id[q["question_id"].rsplit("-", 1)[0]]
        if q["type"] == "count":
            assert q["answer"] == str(len(scene.shapes))
        elif q["type"] == "position":
            assert q["answer"] in {s.quadrant for s in scene.shapes}
        elif q["type"] == "colour" and "the shape in the" in q["question"]:
            quadrant = q["question"].split("the shape in the ")[1].rstrip("?")
            assert q["answer"] == next(s.colour for s in scene.shapes if s.quadrant == quadrant)
        elif q["type"] == "yes/no":
            name = " ".join(q["question"].split()[3:5]).rstrip("?")
            assert q["answer"] == ("yes" if name in {s.name for s in scene.shapes} else "no")
    assert chance_accuracy(questions) < 0.35 and majority_accuracy(questions) < 0.4
