"""LLaVA-NeXT (AnyRes) through ONNX: the vision graph encodes a dynamic number of tiles, the packing runs outside
the graphs with PyTorch's own `pack_anyres`, and ONNX Runtime's greedy tokens equal PyTorch's for every grid, in
left-padded batches of mixed aspect ratios, for the fp32 / int8 / fp16 variants and the other packings."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from hf_llava import LlavaConfig, LlavaForConditionalGeneration, tiny
from hf_llava.cli import main
from hf_llava.modeling.modeling_llava import anyres_grid
from hf_llava.onnx import ORTLlavaForConditionalGeneration, export_onnx

GEN = dict(max_new_tokens=8, do_sample=False)


@pytest.fixture(scope="module")
def ort_next(exported_next):
    return ORTLlavaForConditionalGeneration.from_pretrained(exported_next[2])


def _greedy(model, inputs, **gen):
    with torch.no_grad():
        return model.generate(**inputs, **(GEN | gen))


def test_export_layout_carries_tiles_and_image_newline(exported_next, ort_next, next_config):
    model, _, out = exported_next
    # the exporter's own validation ran on two aspect ratios and matched PyTorch's greedy tokens
    validation = json.loads((out / "onnx" / "export_info.json").read_text())["validation"]
    assert validation["tokens_match"] and validation["relative_diff"] <= validation["tolerance"]
    # transformers.js has no AnyRes packing: the folder names itself llava_next, which it does not load
    assert json.loads((out / "config.json").read_text())["model_type"] == "llava_next"
    [pixels] = ort_next.vision_session.get_inputs()
    assert pixels.shape == ["num_tiles", 3, 16, 16]
    outputs = {o.name: o.shape for o in ort_next.vision_session.get_outputs()}
    assert outputs == {"image_features": ["num_tiles", 16, next_config.text_config.hidden_size],
                       "image_newline": [next_config.text_config.hidden_size]}
    tiles = np.random.default_rng(0).standard_normal((7, 3, 16, 16)).astype(np.float32)
    features, newline = ort_next.vision_session.run(None, {"pixel_values": tiles})
    assert features.shape[0] == 7
    np.testing.assert_array_equal(newline, model.model.image_newline.detach().numpy())


def test_each_aspect_ratio_gives_pytorch_greedy_tokens(exported_next, ort_next, next_images):
    model, processor, _ = exported_next
    grids = set()
    for image in next_images:
        inputs = processor(images=[image], text=["USER: <image>\nWhat is shown in the image? ASSISTANT:"],
                           return_tensors="pt")
        grids.add(anyres_grid(tuple(inputs["image_sizes"][0].tolist()), model.config))
        assert torch.equal(ort_next.generate(**inputs, **GEN), _greedy(model, inputs))
    assert grids == {(1, 3), (3, 1), (2, 2)}


def test_left_padded_batch_of_mixed_aspect_ratios(exported_next, ort_next, next_images):
    model, processor, _ = exported_next
    texts = ["USER: <image>\nWhat is shown in the image? ASSISTANT:", "USER: Describe it. <image> ASSISTANT:",
             "USER: <image> and <image>\nCompare them. ASSISTANT:", "USER: Hi, which color is the circle? ASSISTANT:"]
    images = [next_images[0], next_images[1], next_images[2], next_images[0]]
    inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    assert inputs["pixel_values"].shape == (4, 5, 3, 16, 16)  # (images, max tiles, C, H, W), padded
    assert 0 in inputs["attention_mask"][:, 0].tolist(), "the batch should be left-padded"
    assert torch.equal(ort_next.generate(**inputs, **GEN), _greedy(model, inputs))
    # every step's logits, through the KV cache
    detailed = dict(max_new_tokens=5, min_new_tokens=5, return_dict_in_generate=True, output_logits=True)
    got, ref = ort_next.generate(**inputs, **GEN | detailed), _greedy(model, inputs, **detailed)
    assert torch.equal(got.sequences, ref.sequences)
    for step, (a, b) in enumerate(zip(got.logits, ref.logits)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=lambda m, step=step: f"step {step}: {m}")


def test_missing_or_wrong_image_sizes_are_named_errors(ort_next, exported_next, next_images):
    processor = exported_next[1]
    inputs = processor(images=next_images[:1], text=["USER: <image> hi"], return_tensors="pt")
    with pytest.raises(ValueError, match="image_sizes"):
        ort_next.generate(inputs["input_ids"], pixel_values=inputs["pixel_values"], max_new_tokens=2)
    wrong = dict(inputs, image_sizes=torch.tensor([[10, 60]]))  # the same 1x3 grid, more of it cut away
    with pytest.raises(ValueError, match=r"packed to \[\d+\] tokens"):
        ort_next.generate(**wrong, max_new_tokens=2)


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_variants_validate_within_tolerance_via_cli(dtype, saved_next, tmp_path, next_model, next_processor,
                                                    next_images, capsys):
    out = tmp_path / dtype
    assert main(["export-onnx", str(saved_next), str(out), "--dtype", dtype]) == 0
    assert f"validation ({dtype}, provider CPUExecutionProvider)" in capsys.readouterr().out
    report = json.loads((out / "onnx" / "export_info.json").read_text())["validation"]
    assert report["relative_diff"] <= report["tolerance"]
    ort_model = ORTLlavaForConditionalGeneration.from_pretrained(out, dtype=dtype)
    inputs = next_processor(images=next_images, text=["<image> a", "b <image> c", "<image>"], padding=True,
                            return_tensors="pt")
    with torch.no_grad():
        reference = next_model(**inputs).logits
    real = inputs["attention_mask"].bool()
    diff = (ort_model(**inputs).float() - reference).abs()[real].max().item()
    assert diff <= report["tolerance"] * max(1.0, reference.abs().max().item())


@pytest.mark.parametrize("merge", ["spatial", "flat"])
def test_packings_without_image_newline(merge, next_config, tokenizer, tmp_path, next_images):
    config = LlavaConfig.from_dict({**next_config.to_dict(), "patch_merge_type": merge})
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    processor = tiny.build_processor(tokenizer, config)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    out = export_onnx(tmp_path / "model", tmp_path / "onnx", show_progress=False)  # validates greedy tokens too
    ort_model = ORTLlavaForConditionalGeneration.from_pretrained(out)
    assert [o.name for o in ort_model.vision_session.get_outputs()] == ["image_features"]
    inputs = processor(images=next_images[:2], text=["USER: <image> a", "USER: b <image>"], padding=True,
                       return_tensors="pt")
    assert torch.equal(ort_model.generate(**inputs, **GEN), _greedy(model, inputs))
