"""Helpers for the data tests: LLaVA JSON files and images written into tmp_path."""

import json

import pytest

from hf_llava import tiny


def write_llava(tmp_path, records, name="data.json", n_images=3):
    """Writes `records` and `n_images` PNGs (`img{i}.png`) into tmp_path; returns (json path, image folder)."""
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    for i in range(n_images):
        tiny.demo_image(40 + 8 * i, seed=i).save(folder / f"img{i}.png")
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    else:
        path.write_text(json.dumps(records))
    return path, folder


def sample(i, image=True, question="What is shown?", answer="A red square.", turns=1):
    conv = []
    for t in range(turns):
        q = ("<image>\n" + question) if (t == 0 and image) else question
        conv += [{"from": "human", "value": q}, {"from": "gpt", "value": answer}]
    rec = {"id": f"s{i}", "conversations": conv}
    if image:
        rec["image"] = f"img{i % 3}.png"
    return rec


@pytest.fixture()
def llava_files(tmp_path):
    return write_llava(tmp_path, [sample(0), sample(1, turns=2), sample(2, image=False)])


@pytest.fixture(params=["byte_level", "metaspace"])
def styled(request, tiny_config):
    """(tokenizer, processor) for a byte-level BPE (Llama-3 / Qwen2-like) and a sentencepiece-style
    Metaspace tokenizer (Llama-2 / Vicuna legacy, the one LLaVA-1.5 was trained with)."""
    tokenizer = tiny.build_tokenizer(style=request.param)
    return tokenizer, tiny.build_processor(tokenizer, tiny_config)
