"""Tiny LLaVA training fixtures: a caption dataset written to tmp_path and fast configs."""

import json

import pytest

from hf_llava import tiny
from hf_llava.data import load_llava_dataset


def write_caption_data(tmp_path, n=8, caption="A red square.", name="chat.json", images=None):
    """`n` captioned images (squares of growing size, or `images` in turn) and their LLaVA JSON."""
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    records = []
    for i in range(n):
        image = tiny.demo_image(36 + 4 * i, seed=i) if images is None else images[i % len(images)]
        image.save(folder / f"{i}.png")
        records.append({"id": f"c{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": caption}]})
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path, folder


def fast(config_class, tmp_path, **overrides):
    """A config for a few CPU steps: no saving unless asked, no logging integrations, quiet."""
    kwargs = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=2, logging_steps=1,
                  save_strategy="no", save_at_end=False, disable_tqdm=True, seed=0)
    kwargs.update(overrides)
    return config_class(**kwargs)


@pytest.fixture()
def caption_data(tmp_path):
    path, folder = write_caption_data(tmp_path)
    return load_llava_dataset(path, image_folder=folder)
