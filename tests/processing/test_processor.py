"""LlavaProcessor: parity with transformers' processor, token expansion, images, truncation."""

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from hf_llava import LlavaForConditionalGeneration
from hf_llava.tiny import build_processor

PROMPTS = ["USER: <image>\nWhat is shown? ASSISTANT:", "USER: Describe it.\n<image> ASSISTANT: A red square.</s>"]


def anchor_processor(processor):
    return transformers.LlavaProcessor(
        image_processor=processor.image_processor, tokenizer=processor.tokenizer, patch_size=processor.patch_size,
        vision_feature_select_strategy=processor.vision_feature_select_strategy,
        num_additional_image_tokens=processor.num_additional_image_tokens,
    )


def test_same_output_as_transformers_processor(tiny_processor, images):
    ours = tiny_processor(images=images, text=PROMPTS, padding=True, return_tensors="pt")
    theirs = anchor_processor(tiny_processor)(images=images, text=PROMPTS, padding=True, return_tensors="pt")
    assert set(ours) == set(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("strategy", ["default", "full"])
def test_each_image_expands_to_the_models_token_count(tokenizer, tiny_config, images, strategy):
    config = tiny_config.__class__.from_dict(
        {k: v for k, v in {**tiny_config.to_dict(), "vision_feature_select_strategy": strategy}.items()
         if k != "image_seq_length"})
    processor = build_processor(tokenizer, config)
    inputs = processor(images=images, text=PROMPTS, padding=True, return_tensors="pt")
    counts = (inputs["input_ids"] == config.image_token_id).sum(1).tolist()
    assert counts == [config.image_seq_length] * 2 == [25 if strategy == "default" else 26] * 2
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        assert model(**inputs).image_hidden_states.shape[:2] == (2, config.image_seq_length)


def expand2square(image, background):
    """The original LLaVA-1.5 `expand2square`: paste centred on a square of the mean colour."""
    width, height = image.size
    side = max(width, height)
    result = Image.new(image.mode, (side, side), background)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


def test_pad_to_square_is_llava_1_5s(tiny_processor, images):
    image_processor = tiny_processor.image_processor
    mean = tuple(int(x * 255) for x in image_processor.image_mean)
    assert mean == (122, 116, 104)
    for image in images:
        assert image.width != image.height
        ours = tiny_processor(images=image, text="<image>", return_tensors="pt")["pixel_values"]
        clip = transformers.CLIPImageProcessor(**{k: v for k, v in image_processor.to_dict().items()
                                                  if k in ("size", "crop_size", "image_mean", "image_std")})
        reference = clip(expand2square(image, mean), return_tensors="pt")["pixel_values"]
        assert torch.allclose(ours, reference, atol=1e-5)


def test_image_inputs_of_every_kind(tiny_processor, images, tmp_path):
    rgb = images[0]
    path = tmp_path / "picture.png"
    rgb.save(path)
    reference = tiny_processor(images=rgb, text="<image>", return_tensors="pt")["pixel_values"]
    for variant in (str(path), f"file://{path}", path, np.asarray(rgb), torch.from_numpy(np.asarray(rgb).copy())):
        pixel_values = tiny_processor(images=variant, text="<image>", return_tensors="pt")["pixel_values"]
        assert torch.allclose(pixel_values, reference, atol=1e-6), type(variant)
    for mode in ("RGBA", "L", "P", "CMYK", "LA"):
        pixel_values = tiny_processor(images=rgb.convert(mode), text="<image>", return_tensors="pt")["pixel_values"]
        assert pixel_values.shape == reference.shape, mode


def test_alpha_is_dropped_as_pil_convert_and_arrays_match_pil(tiny_processor, images):
    """RGBA / LA / L inputs give what `PIL.Image.convert("RGB")` gives (the original's and transformers' rule),
    whether passed as PIL images or as (H, W, 4) / (H, W) arrays."""
    rgba = np.asarray(images[0].convert("RGBA")).copy()
    rgba[..., 3] = np.linspace(0, 255, rgba.shape[1], dtype=np.uint8)  # varying transparency
    pil = Image.fromarray(rgba, "RGBA")

    def pixels(image):
        return tiny_processor(images=image, text="<image>", return_tensors="pt")["pixel_values"]

    expected = pixels(pil.convert("RGB"))
    assert torch.allclose(pixels(pil), expected, atol=1e-6)
    assert torch.allclose(pixels(rgba), expected, atol=1e-6)
    gray = np.asarray(images[0].convert("L"))
    assert torch.allclose(pixels(gray), pixels(Image.fromarray(gray, "L")), atol=1e-6)
    la = np.stack([gray, np.full_like(gray, 7)], axis=-1)
    assert torch.allclose(pixels(la), pixels(Image.fromarray(gray, "L")), atol=1e-6)


def test_bad_images_are_named(tiny_processor, tmp_path):
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"not a jpeg at all")
    with pytest.raises(ValueError, match="broken.jpg"):
        tiny_processor(images=str(corrupt), text="<image>")
    with pytest.raises(ValueError, match="no such file"):
        tiny_processor(images=str(tmp_path / "missing.png"), text="<image>")
    with pytest.raises(ValueError, match="zero-sized"):
        tiny_processor(images=Image.new("RGB", (0, 10)), text="<image>")
    with pytest.raises(ValueError, match="no network"):
        tiny_processor(images="https://example.com/cat.png", text="<image>")


def test_placeholder_and_image_counts_must_agree(tiny_processor, images):
    with pytest.raises(ValueError, match="1 '<image>' placeholder.*2 image"):
        tiny_processor(images=images, text="USER: <image>\nhi")
    # a placeholder without an image would stay one unexpanded token the model reads as a word
    with pytest.raises(ValueError, match="1 '<image>' placeholder.*0 image"):
        tiny_processor(text="USER: <image>\nWhat is shown? ASSISTANT:")
    with pytest.raises(ValueError, match="0 '<image>' placeholder.*1 image"):
        tiny_processor(images=images[0], text="USER: What is shown? ASSISTANT:")


def test_model_refuses_image_tokens_without_images(tiny_model, tiny_processor, images):
    inputs = tiny_processor(images=images[0], text="USER: <image>\nhi ASSISTANT:", return_tensors="pt")
    with pytest.raises(ValueError, match=r"has 25 image tokens .* no pixel_values"):
        tiny_model(input_ids=inputs["input_ids"])
    with pytest.raises(ValueError, match=r"has 0 image tokens .* 1 image\(s\) x 25"):
        text_only = tiny_processor(text="USER: hi ASSISTANT:", return_tensors="pt")
        tiny_model(input_ids=text_only["input_ids"], pixel_values=inputs["pixel_values"])
    # generation still works (decoding steps feed one token and no pixel values)
    out = tiny_model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


def test_loading_picks_the_pil_image_processor_and_leaves_the_tokenizer_as_saved(saved_llava, tiny_processor):
    from transformers import AutoProcessor

    from hf_llava._compat import pil_image_processor

    processor = AutoProcessor.from_pretrained(saved_llava)
    assert type(processor.image_processor) is pil_image_processor("LlavaImageProcessor")  # the PIL/numpy one
    # the image-processor choice must not reach the tokenizer (4.57: a slow tokenizer; 5.x: its `backend`)
    assert processor.tokenizer.is_fast and getattr(processor.tokenizer, "backend", "tokenizers") == "tokenizers"
    assert processor.tokenizer.init_kwargs.get("backend", "tokenizers") == "tokenizers"
    assert "use_fast" not in processor.tokenizer.init_kwargs  # (quiet: modeling/test_auto_and_hub.py)


def test_truncation_never_cuts_image_tokens(tiny_processor, images):
    text = "USER: <image>\nWhat is shown in the image? Describe it in detail. ASSISTANT:"
    full = tiny_processor(images=images[0], text=text)["input_ids"][0]
    with pytest.raises(ValueError, match="cut through its image tokens"):
        tiny_processor(images=images[0], text=text, truncation=True, max_length=10)
    # text_only drops text tokens and keeps every image token
    kept = tiny_processor(images=images[0], text=text, truncation="text_only", max_length=40)["input_ids"][0]
    assert len(kept) == 40
    image_id = tiny_processor.image_token_id
    assert kept.count(image_id) == full.count(image_id) == 25
    # a cut that leaves the image tokens whole is an ordinary truncation
    right = tiny_processor(images=images[0], text=text, truncation=True, max_length=len(full) - 3)["input_ids"][0]
    assert right == full[: len(full) - 3]
    with pytest.raises(ValueError, match="image tokens alone exceed"):
        tiny_processor(images=images[0], text=text, truncation="text_only", max_length=20)


def test_text_only_batch_with_padding(tiny_processor):
    out = tiny_processor(text=["USER: hi ASSISTANT:", "USER: a longer question here ASSISTANT:"],
                         padding=True, return_tensors="pt")
    assert out["input_ids"].shape == out["attention_mask"].shape
    assert out["attention_mask"][0, 0] == 0  # left padding
    assert "pixel_values" not in out
