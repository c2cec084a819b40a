"""Reading LLaVA JSON / JSONL and the up-front validation errors (file, sample id, problem)."""

import logging

import pytest

from hf_llava.data import IMAGE_ASPECT_RATIOS, load_llava_dataset
from hf_llava.modeling.configuration_llava import IMAGE_ASPECT_RATIOS as CONFIG_IMAGE_ASPECT_RATIOS

from .conftest import sample, write_llava


def test_reads_json_and_jsonl_with_text_only_samples(tmp_path, llava_files):
    path, folder = llava_files
    ds = load_llava_dataset(path, image_folder=folder)
    assert len(ds) == 3 and ds.column_names == ["id", "image", "conversations"]
    assert ds[0]["image"] == str(folder / "img0.png") and ds[2]["image"] is None
    assert ds[1]["conversations"][2] == {"from": "human", "value": "What is shown?"}
    jpath, _ = write_llava(tmp_path, [sample(0), sample(1)], name="data.jsonl")
    assert load_llava_dataset(jpath, image_folder=folder)["id"] == ["s0", "s1"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.pop("conversations"), "missing field 'conversations'"),
        (lambda r: r.pop("id"), "missing field 'id'"),
        (lambda r: r["conversations"][1].update({"from": "bot"}), "unknown role 'bot'"),
        (lambda r: r["conversations"].reverse(), "turns out of order"),
        (lambda r: r.pop("image"), "'<image>' in the text but the sample has no 'image' field"),
        (lambda r: r.update({"image": "nope.png"}), "image file missing"),
        (lambda r: r["conversations"][1].update({"value": "<image> x"}), "must appear once, in the first human turn"),
    ],
)
def test_validation_names_file_sample_and_problem(tmp_path, mutate, message):
    bad = sample(1)
    mutate(bad)
    path, folder = write_llava(tmp_path, [sample(0), bad])
    with pytest.raises(ValueError) as err:
        load_llava_dataset(path, image_folder=folder)
    first = str(err.value).splitlines()[0]  # what a CLI shows first: the count, the problem and the fix
    assert first.startswith(f"{path}: ") and " in the LLaVA data" in first
    assert message in first and "(index 1)" in first and "fix" in first
    if "id" in bad:
        assert "'s1'" in first


def test_missing_image_names_the_resolved_path_and_the_image_folder(tmp_path):
    missing = sample(1)
    missing["image"] = "sub/gone.png"
    path, folder = write_llava(tmp_path, [sample(0), missing])
    with pytest.raises(ValueError) as err:
        load_llava_dataset(path, image_folder=folder)
    first = str(err.value).splitlines()[0]
    assert f"image file missing: '{folder / 'sub' / 'gone.png'}'" in first
    assert f"joined with image_folder='{folder}'" in first and "bad_image_policy='skip'" in first
    with pytest.raises(ValueError) as err:  # no folder given: paths resolve against the working directory
        load_llava_dataset(path)
    assert "image paths resolve against image_folder=DIR, not given" in str(err.value).splitlines()[0]


def test_missing_image_skip_policy_drops_and_logs(tmp_path, caplog):
    missing = sample(1)
    missing["image"] = "gone.png"
    path, folder = write_llava(tmp_path, [sample(0), missing, sample(2)])
    with caplog.at_level(logging.WARNING):
        ds = load_llava_dataset(path, image_folder=folder, bad_image_policy="skip")
    assert ds["id"] == ["s0", "s2"]
    assert "gone.png" in caplog.text and "'s1'" in caplog.text


def test_all_problems_reported_at_once(tmp_path):
    records = [sample(i) for i in range(4)]
    for r in records[1:]:
        r["conversations"][0]["from"] = "system"
    path, folder = write_llava(tmp_path, records)
    with pytest.raises(ValueError) as err:
        load_llava_dataset(path, image_folder=folder)
    lines = str(err.value).splitlines()
    assert "3 problems in the LLaVA data, the first: sample 's1' (index 1): turn 0: unknown role 'system'" in lines[0]
    assert [line.strip().split(":")[0] for line in lines[1:]] == ["sample 's2' (index 2)", "sample 's3' (index 3)"]


def test_the_data_pipelines_aspect_ratios_are_the_model_configs():
    """Data may not import modeling, so it names the options itself: the same ones LlavaConfig takes."""
    assert IMAGE_ASPECT_RATIOS == CONFIG_IMAGE_ASPECT_RATIOS
