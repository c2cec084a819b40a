"""Symbolic images: the JSONL layout, COCO conversion, the rendering, and bad input (exit 2, nothing written)."""

import json

import pytest

from hf_llava import cli
from hf_llava.datagen import read_coco, read_symbolic_jsonl, render_context

from .conftest import symbolic_records, write_jsonl


def _coco(tmp_path, caption_ids=(1, 2)):
    instances = {
        "images": [{"id": 1, "file_name": "000000000001.jpg", "width": 640, "height": 480},
                   {"id": 2, "file_name": "000000000002.jpg", "width": 200, "height": 100}],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 18, "bbox": [64, 48, 256, 192], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [0, 0, 640.4, 480], "iscrowd": 0},
            {"id": 12, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "iscrowd": 1},
            {"id": 13, "image_id": 2, "category_id": 1, "bbox": [50, 25, 100, 50], "iscrowd": 0},
        ],
    }
    captions = {"images": instances["images"], "annotations": [
        {"id": 100 + i, "image_id": image_id, "caption": f"  A dog in   picture {image_id}.\n"}
        for i, image_id in enumerate(caption_ids)]}
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    return str(tmp_path / "instances.json"), str(tmp_path / "captions.json")


def test_coco_boxes_are_normalised_by_each_images_size_and_rendered_as_the_paper_writes_them(tmp_path):
    images = read_coco(*_coco(tmp_path))
    assert [(i.id, i.image) for i in images] == [("1", "000000000001.jpg"), ("2", "000000000002.jpg")]
    assert render_context(images[0]).splitlines() == [
        "Captions:", "A dog in picture 1.", "",
        "Objects (category: [x1, y1, x2, y2], normalised to 0-1, origin top left):",
        "dog: [0.100, 0.100, 0.500, 0.500]",
        "person: [0.000, 0.000, 1.000, 1.000]",  # overhanging by a fraction of a pixel: clamped; crowd left out
    ]
    assert images[1].instances == [{"category": "person", "bbox": [0.25, 0.25, 0.75, 0.75]}]


def test_jsonl_in_the_original_layout_is_read_as_is(tmp_path):
    path = write_jsonl(tmp_path / "caps.jsonl", symbolic_records(2))
    first = read_symbolic_jsonl(path)[0]
    assert (first.id, first.image, first.captions[1]) == ("img000", "coco/img000.jpg", "A living room with a sofa "
                                                                                        "and a lamp.")
    assert "cat: [0.100, 0.250, 0.500, 0.750]" in render_context(first)


def _bad_jsonl(tmp_path, line):
    lines = [json.dumps(r) for r in symbolic_records(3)]
    lines[1] = line
    (tmp_path / "caps.jsonl").write_text("\n".join(lines) + "\n")
    return ["--input", str(tmp_path / "caps.jsonl")]


BOX_OUTSIDE = json.dumps({**symbolic_records(1)[0], "id": "x", "instances": [{"category": "cat",
                                                                            "bbox": [0.1, 0.2, 1.4, 0.5]}]})


@pytest.mark.parametrize("make_argv,needles", [
    (lambda tmp: _bad_jsonl(tmp, '{"id": "x", "image": '), ["caps.jsonl, line 2", "not valid JSON"]),
    (lambda tmp: _bad_jsonl(tmp, BOX_OUTSIDE), ["caps.jsonl, line 2", "outside [0, 1]"]),
    (lambda tmp: _bad_jsonl(tmp, json.dumps(symbolic_records(1)[0])), ["caps.jsonl, line 2", "repeats line 1"]),
    (lambda tmp: ["--coco-instances", _coco(tmp, caption_ids=(1,))[0], "--coco-captions", str(tmp / "captions.json")],
     ["instances.json", "have no captions", ": 2;", "--coco-captions"]),
    (lambda tmp: _bad_jsonl(tmp, "{}") + ["--types", "conversation,dialogue"], ["--types", "'dialogue'"]),
    (lambda tmp: ["--input", str(tmp / "missing.jsonl")], ["--input", "missing.jsonl", "no such file"]),
    (lambda tmp: ["--coco-instances", str(tmp / "i.json")], ["--coco-captions", "pass both"]),
])
def test_bad_input_names_file_and_line_exits_2_and_writes_nothing(tmp_path, capsys, cli_error, teacher_server,
                                                                  make_argv, needles):
    out = tmp_path / "out" / "data.json"
    argv = ["datagen", *make_argv(tmp_path), "--base-url", teacher_server.url, "--model", "m", "--output", str(out)]
    assert cli.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    cli_error(err, "datagen")
    for needle in needles:
        assert needle in "\n".join(err), (needle, err)
    assert not (tmp_path / "out").exists() and teacher_server.requests == []
