"""LLaVA-NeXT (AnyRes) in the same classes: parity with transformers' `llava_next` (same weights -> same
`input_ids`, `pixel_values`, logits and greedy tokens), the processor's counts against the model's packing, the
packing variants, the Auto classes, the pipeline and trust_remote_code loading of a NeXT folder."""

import os
import subprocess
import sys

import pytest
import torch
import transformers
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

from hf_llava import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, tiny
from hf_llava.conversion import transformers_config
from hf_llava.modeling.configuration_llava import default_grid_pinpoints
from hf_llava.modeling.modeling_llava import anyres_grid, pack_anyres

def anchor_from(model) -> transformers.LlavaNextForConditionalGeneration:
    """transformers' LlavaNextForConditionalGeneration with our config and weights (strict load)."""
    anchor = transformers.LlavaNextForConditionalGeneration(transformers_config(model.config)).eval()
    anchor.load_state_dict(model.state_dict(), strict=True)
    return anchor


def anchor_processor(processor) -> transformers.LlavaNextProcessor:
    return transformers.LlavaNextProcessor(
        image_processor=processor.image_processor, tokenizer=processor.tokenizer, patch_size=processor.patch_size,
        vision_feature_select_strategy=processor.vision_feature_select_strategy, image_token=processor.image_token,
        num_additional_image_tokens=processor.num_additional_image_tokens,
    )


def mixed_batch(processor, images):
    """Left-padded: an image first, an image after the text, two images in one prompt, a text-only row."""
    messages = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown in the image?"}]}],
        [{"role": "user", "content": [{"type": "text", "text": "Describe it."}, {"type": "image"}]}],
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is the dog under the table?"}]}],
        [{"role": "user", "content": [{"type": "text", "text": "Hi, which color is the circle?"}]}],
    ]
    prompts = [processor.apply_chat_template(m, add_generation_prompt=True) for m in messages]
    prompts[2] = prompts[2].replace("<image>", "<image>\n<image>")
    return prompts, [images[0], images[1], images[2], images[0]]


def test_grids_follow_the_aspect_ratio(next_model, next_processor, next_images):
    sizes = next_processor.image_processor(next_images)["image_sizes"]
    assert [anyres_grid(tuple(size), next_model.config) for size in sizes] == [(1, 3), (3, 1), (2, 2)]
    assert next_model.config.image_grid_pinpoints == default_grid_pinpoints(16)
    assert default_grid_pinpoints(336) == [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def test_inputs_logits_and_greedy_tokens_match_transformers_llava_next(next_model, next_processor, next_images):
    prompts, images = mixed_batch(next_processor, next_images)
    inputs = next_processor(images=images, text=prompts, padding=True, return_tensors="pt")
    expected = anchor_processor(next_processor)(images=images, text=prompts, padding=True, return_tensors="pt")
    assert set(inputs) == set(expected)
    for name in expected:
        assert torch.equal(inputs[name], expected[name]), name
    assert inputs["pixel_values"].shape == (4, 5, 3, 16, 16)  # (images, max tiles, C, H, W), padded
    assert inputs["attention_mask"][:, 0].tolist() != [1] * 4  # left padding is exercised
    anchor = anchor_from(next_model)
    with torch.no_grad():
        ours, theirs = next_model(**inputs), anchor(**inputs)
    assert (ours.logits - theirs.logits).abs().max().item() <= 1e-4
    num_image_tokens = int((inputs["input_ids"] == next_model.config.image_token_id).sum())
    assert ours.image_hidden_states.shape == (num_image_tokens, next_model.config.text_config.hidden_size)
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=next_processor.tokenizer.pad_token_id)
    assert torch.equal(next_model.generate(**inputs, **kwargs), anchor.generate(**inputs, **kwargs))


def test_kv_cache_generation_equals_uncached(next_model, next_processor, next_images):
    prompts, images = mixed_batch(next_processor, next_images)
    inputs = next_processor(images=images[:2], text=prompts[:2], padding=True, return_tensors="pt")
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=next_processor.tokenizer.pad_token_id)
    assert torch.equal(next_model.generate(**inputs, **kwargs), next_model.generate(**inputs, use_cache=False,
                                                                                    **kwargs))


@pytest.mark.parametrize("merge", ["spatial_unpad", "spatial", "flat"])
def test_processor_counts_equal_the_model_s_packing_for_every_size(tokenizer, next_config, merge):
    config = LlavaConfig.from_dict({**next_config.to_dict(), "patch_merge_type": merge})
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    assert hasattr(model.model, "image_newline") == (merge == "spatial_unpad")
    processor = tiny.build_processor(tokenizer, config)
    sizes = [(h, w) for h in (1, 5, 16, 17, 31, 48, 100) for w in (1, 3, 16, 23, 33, 64, 250)]
    tiles = torch.randn(config.max_tiles, 16, config.text_config.hidden_size)
    for size in sizes:
        rows, cols = anyres_grid(size, config)
        packed = pack_anyres(tiles[: 1 + rows * cols], size, config, getattr(model.model, "image_newline", None))
        assert packed.shape[0] == processor.anyres_num_image_tokens(size, (16, 16)), size


def test_spatial_variants_run_end_to_end(tokenizer, next_config, next_images):
    for merge in ("spatial", "flat"):
        config = LlavaConfig.from_dict({**next_config.to_dict(), "patch_merge_type": merge})
        model = LlavaForConditionalGeneration(config).eval()
        processor = tiny.build_processor(tokenizer, config)
        inputs = processor(images=next_images[:2], text=["<image> a", "b <image>"], padding=True,
                           return_tensors="pt")
        with torch.no_grad():
            assert model(**inputs).logits.shape[:2] == inputs["input_ids"].shape


def test_clear_errors(next_model, next_processor, next_images):
    inputs = next_processor(images=next_images[:1], text="USER: <image> hi", return_tensors="pt")
    with pytest.raises(ValueError, match="image_sizes"):
        next_model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"])
    wrong = dict(inputs, image_sizes=torch.tensor([[10, 60]]))  # the same 1x3 grid, more of it cut away
    with pytest.raises(ValueError, match=r"packed to \[\d+\] tokens") as error:
        next_model(**wrong)
    assert f"has {int((inputs['input_ids'] == next_model.config.image_token_id).sum())} image tokens" in str(
        error.value)
    with pytest.raises(ValueError, match="tile"):
        next_model(**dict(inputs, pixel_values=inputs["pixel_values"][:, :2]))


def test_auto_classes_pipeline_and_remote_code_take_a_next_folder(saved_next, next_model, next_processor,
                                                                 next_images, tmp_path):
    model = AutoModelForImageTextToText.from_pretrained(saved_next)
    assert type(model) is LlavaForConditionalGeneration and model.config.image_aspect_ratio == "anyres"
    for name, tensor in next_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    processor = AutoProcessor.from_pretrained(saved_next)
    assert type(processor) is LlavaProcessor and processor.anyres
    messages = [{"role": "user", "content": [{"type": "image", "image": next_images[0]},
                                             {"type": "text", "text": "What is shown?"}]}]
    prompt = next_processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = next_processor(images=next_images[0], text=prompt, return_tensors="pt")
    direct = next_model.generate(**inputs, max_new_tokens=6, do_sample=False)
    answer = next_processor.decode(direct[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    pipe = pipeline("image-text-to-text", model=str(saved_next))
    assert pipe(text=messages, max_new_tokens=6, do_sample=False, return_full_text=False)[0][
        "generated_text"] == answer
    image_path = tmp_path / "wide.png"
    next_images[0].save(image_path)
    script = (
        "import sys, torch\n"
        "from PIL import Image\n"
        "from transformers import AutoModelForImageTextToText, AutoProcessor\n"
        "model = AutoModelForImageTextToText.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "processor = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "assert 'hf_llava' not in sys.modules\n"
        "inputs = processor(images=Image.open(sys.argv[2]), text=sys.argv[3], return_tensors='pt')\n"
        "print(model.generate(**inputs, max_new_tokens=6, do_sample=False)[0].tolist())\n"
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script, str(saved_next), str(image_path), prompt], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == str(direct[0].tolist())
