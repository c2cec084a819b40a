"""The shipped pretrained components: standard transformers folders, a few MB, reproducible by the script."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (AutoImageProcessor, AutoModel, AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel,
                          LlamaForCausalLM)

from hf_llava.world.parts import (CHAT_MODEL, LANGUAGE_MODEL, VISION_TOWER, language_model_path, pretrained_root,
                                  vision_tower_path)
from hf_llava.builder import build_processor
from hf_llava.world.questions import QUESTION_TYPES
from hf_llava.world.scenes import SHAPES, draw, make_scenes

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
SCRIPT = SCRIPTS / "pretrain_world.py"
sys.path.insert(0, str(SCRIPTS))  # the probes live beside the script that pretrains the parts
from world_probes import (PROBE_SPLIT, chat_text, context_qa_with_control, encode_shorthand,  # noqa: E402
                          shorthand_qa)


def test_the_vision_tower_loads_with_the_auto_classes_and_sees_a_picture():
    model = AutoModel.from_pretrained(vision_tower_path()).eval()
    assert isinstance(model, CLIPVisionModel)
    image_processor = AutoImageProcessor.from_pretrained(vision_tower_path())
    pixels = image_processor(draw(make_scenes(1, 0, "parts")[0]), return_tensors="pt")["pixel_values"]
    config = model.config
    with torch.no_grad():
        hidden = model(pixel_values=pixels).last_hidden_state
    assert hidden.shape == (1, (config.image_size // config.patch_size) ** 2 + 1, config.hidden_size)


@pytest.fixture(scope="module")
def world_lm():
    """The shipped LM and its tokenizer, loaded once with the Auto classes."""
    return (AutoModelForCausalLM.from_pretrained(language_model_path()).eval(),
            AutoTokenizer.from_pretrained(language_model_path()))


def test_the_language_model_loads_with_the_auto_classes_and_knows_the_worlds_text(world_lm):
    model, tokenizer = world_lm
    assert isinstance(model, LlamaForCausalLM)
    caption = "A large red circle in the top left and a small blue square in the bottom right."
    scrambled = "Left the circle small and in bottom a right red square large top blue the a in."

    def loss(text: str) -> float:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            return model(input_ids=ids, labels=ids).loss.item()

    assert loss(caption) < loss(scrambled) / 2
    ids = tokenizer("A small green", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        continuation = tokenizer.decode(model.generate(ids, max_new_tokens=2, do_sample=False)[0, ids.shape[1]:])
    assert continuation.split()[0] in SHAPES


def test_the_shipped_weights_are_a_few_megabytes():
    files = list(pretrained_root().rglob("*.safetensors"))
    assert {f.parent.name for f in files} == {VISION_TOWER, LANGUAGE_MODEL, CHAT_MODEL}
    assert sum(f.stat().st_size for f in files if f.parent.name != CHAT_MODEL) < 8 * 2**20


@pytest.mark.slow
def test_the_pretraining_script_reproduces_components_that_load_with_the_auto_classes(tmp_path):
    tiny = ["--scenes", "64", "--clip-steps", "3", "--clip-batch", "16", "--lm-steps", "3", "--lm-batch", "4",
            "--vocab-size", "320", "--threads", "1"]
    for run in ("a", "b"):
        subprocess.run([sys.executable, str(SCRIPT), "--output", str(tmp_path / run), *tiny], check=True,
                       capture_output=True, timeout=300)
    for part in (VISION_TOWER, LANGUAGE_MODEL):
        first, second = (tmp_path / run / part / "model.safetensors" for run in ("a", "b"))
        assert first.read_bytes() == second.read_bytes()  # same seed, same weights
    assert isinstance(AutoModel.from_pretrained(tmp_path / "a" / VISION_TOWER), CLIPVisionModel)
    AutoImageProcessor.from_pretrained(tmp_path / "a" / VISION_TOWER)
    assert isinstance(AutoModelForCausalLM.from_pretrained(tmp_path / "a" / LANGUAGE_MODEL), LlamaForCausalLM)
    assert len(AutoTokenizer.from_pretrained(tmp_path / "a" / LANGUAGE_MODEL)) <= 320


def test_the_language_model_answers_questions_about_the_caption_in_its_context(world_lm):
    # blind: the same questions after another picture's caption (what the LM answers without the facts)
    read, blind = context_qa_with_control(*world_lm, make_scenes(30, 0, PROBE_SPLIT))
    assert read["questions"] >= 120 and set(read["per_type"]) == set(QUESTION_TYPES)
    assert read["accuracy"] >= blind["accuracy"] + 20, (read, blind)


@pytest.mark.parametrize("layout,short", [("pretraining", False), ("pretraining", True), ("chat", False)])
def test_the_language_model_answers_questions_about_a_picture_in_shorthand(world_lm, layout, short):
    """The interface LLaVA's projector learns to feed: each quadrant one position, the mean embedding of its words."""
    scenes = make_scenes(30, 0, PROBE_SPLIT)
    read = shorthand_qa(*world_lm, scenes, layout=layout, short=short)
    blind = shorthand_qa(*world_lm, scenes, pictures_of=scenes[1:] + scenes[:1], layout=layout, short=short)
    assert read["questions"] >= 120 and set(read["per_type"]) == set(QUESTION_TYPES)
    assert read["accuracy"] >= 85, read
    assert read["accuracy"] >= blind["accuracy"] + 30, (read, blind)


@pytest.mark.parametrize("template", ["plain", "vicuna_v1"])
def test_shorthand_pages_are_laid_out_as_the_stage_trainers_feed_the_lm(world_lm, template):
    """The LM's pretraining pages in stage 1's and stage 2's layouts are token for token what LLaVA's processor
    makes of the same sample, with the picture's four image tokens where the shorthand goes."""
    _, tokenizer = world_lm
    scene = make_scenes(1, 0, PROBE_SPLIT)[0]
    processor = build_processor(vision_tower_path(), language_model_path(), chat_template=template)
    turns = [("What colour is the circle?", "The circle is red."), ("How many shapes are there?", "There are two.")]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": turns[0][0]}]},
                {"role": "assistant", "content": turns[0][1]}]
    if template == "plain":
        page = f"<image>{turns[0][1]}\n"
    else:
        messages += [{"role": "user", "content": turns[1][0]}, {"role": "assistant", "content": turns[1][1]}]
        page = chat_text(tokenizer, turns)
    rendered = processor.apply_chat_template(messages)
    expected = processor(images=draw(scene), text=rendered, return_tensors="pt")["input_ids"][0].tolist()
    assert encode_shorthand(tokenizer, scene, page)[0] == expected


def test_a_shorthand_page_needs_one_place_for_the_picture(world_lm):
    scene = make_scenes(1, 0, PROBE_SPLIT)[0]
    with pytest.raises(ValueError, match="exactly one <image>"):
        encode_shorthand(world_lm[1], scene, "Question: where is it? Answer:")
