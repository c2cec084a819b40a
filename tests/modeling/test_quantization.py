"""bitsandbytes loading: the language model in 4 / 8 bits, the vision tower, the projector and the LM head in the
model's dtype, through `from_pretrained`, the Auto classes, `pipeline` and `device_map="auto"`, on both lines.

bitsandbytes 0.50 runs its 4-bit and 8-bit layers on CPU (its fast 4-bit CPU kernel comes from the Hub and falls back
to a slower path offline). What needs CUDA (bfloat16 compute, a 7B-shaped model's memory) is marked for it.
"""

import copy

import pytest
import torch
from torch import nn

from hf_llava import LlavaForConditionalGeneration, tiny
from hf_llava._loading import bitsandbytes_config, load_quantized

bnb = pytest.importorskip("bitsandbytes", reason="the [quant] extra (bitsandbytes) is not installed")

KINDS = {  # name -> (bitsandbytes_config arguments, the class of a quantised LM layer, its 4-bit data type)
    "nf4-double-quant": ({"bits": 4}, bnb.nn.Linear4bit, "nf4"),
    "fp4": ({"bits": 4, "quant_type": "fp4", "double_quant": False}, bnb.nn.Linear4bit, "fp4"),
    "int8": ({"bits": 8}, bnb.nn.Linear8bitLt, None),
}


@pytest.fixture()
def saved(tmp_path):
    """A tiny LLaVA (LM hidden size 64: bitsandbytes' 4-bit blocks are 64 wide) saved with its processor."""
    model, processor = tiny.build_llava(seed=0)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    return tmp_path / "model", model, processor


def _inputs(processor):
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}],
        add_generation_prompt=True)
    return processor(images=tiny.demo_image(64, seed=1), text=prompt, return_tensors="pt")


def _tower_linear(model) -> nn.Module:
    return next(m for name, m in model.named_modules() if "vision_tower" in name and name.endswith("q_proj"))


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_language_model_is_quantised_and_the_rest_keeps_its_dtype(saved, kind):
    path, full, processor = saved
    arguments, layer_class, quant_type = KINDS[kind]
    config = bitsandbytes_config(**arguments)
    given = copy.deepcopy(config)
    model = LlavaForConditionalGeneration.from_pretrained(path, quantization_config=config)
    assert config.to_dict() == given.to_dict()  # the caller's config is left as it was
    layers = model.model.language_model.layers
    assert all(isinstance(layer.self_attn.q_proj, layer_class) and isinstance(layer.mlp.down_proj, layer_class)
               for layer in layers)
    if quant_type is not None:
        weight = layers[0].self_attn.q_proj.weight
        assert weight.quant_state.quant_type == quant_type
        assert (weight.quant_state.state2 is not None) == arguments.get("double_quant", True)
    for module in (_tower_linear(model), model.model.multi_modal_projector.linear_1, model.lm_head):
        assert type(module) is nn.Linear and module.weight.dtype == torch.float32  # as saved, on both lines
    assert model.config.quantization_config.llm_int8_skip_modules == [  # saved with the model, so a reload agrees
        "model.vision_tower", "model.multi_modal_projector", "lm_head"]
    # the unquantised parts hold the saved weights exactly; the quantised model still computes about the same thing
    projector, saved_projector = model.model.multi_modal_projector, full.model.multi_modal_projector
    assert torch.equal(projector.linear_1.weight, saved_projector.linear_1.weight)
    inputs = _inputs(processor)
    with torch.no_grad():
        logits, reference = model(**inputs).logits[0, -1], full(**inputs).logits[0, -1]
    assert torch.corrcoef(torch.stack([logits, reference]))[0, 1] > 0.9
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 4)
    assert model.get_memory_footprint() < full.get_memory_footprint()


def test_an_explicit_skip_list_is_taken_as_given(saved):
    path, _, _ = saved
    config = bitsandbytes_config(4)
    config.llm_int8_skip_modules = ["model.multi_modal_projector", "lm_head"]
    model = LlavaForConditionalGeneration.from_pretrained(path, quantization_config=config)
    assert isinstance(_tower_linear(model), bnb.nn.Linear4bit)  # what transformers' llava does by default
    assert type(model.model.multi_modal_projector.linear_1) is nn.Linear


def test_auto_classes_pipeline_and_device_map_auto(saved):
    from transformers import AutoModelForImageTextToText, pipeline

    path, _, processor = saved
    config = bitsandbytes_config(4)
    model = AutoModelForImageTextToText.from_pretrained(path, quantization_config=config, device_map="auto")
    assert type(model) is LlavaForConditionalGeneration
    assert {p.device.type for p in model.parameters()} == {"cuda" if torch.cuda.is_available() else "cpu"}
    assert isinstance(model.model.language_model.layers[0].mlp.up_proj, bnb.nn.Linear4bit)
    assert type(_tower_linear(model)) is nn.Linear
    pipe = pipeline("image-text-to-text", model=str(path), model_kwargs={"quantization_config": config})
    assert isinstance(pipe.model.model.language_model.layers[0].mlp.up_proj, bnb.nn.Linear4bit)
    messages = [{"role": "user", "content": [{"type": "image", "image": tiny.demo_image(64, seed=1)},
                                             {"type": "text", "text": "What is shown?"}]}]
    reply = pipe(text=messages, max_new_tokens=4, do_sample=False)
    expected = model.generate(**_inputs(processor), max_new_tokens=4, do_sample=False)
    assert reply[0]["generated_text"][-1]["content"] == processor.decode(
        expected[0, _inputs(processor)["input_ids"].shape[1]:], skip_special_tokens=True)


def test_load_quantized_merges_an_adapter_in_full_precision_first(saved, tmp_path, caplog):
    """An adapter is merged into its full-precision base, then the merged weights are quantised (merging into 4-bit
    weights would round them twice): the result equals the merged model saved and loaded in 4-bit."""
    from peft import get_peft_model

    from hf_llava.trainers import lm_lora_config

    path, _, _ = saved
    peft = get_peft_model(LlavaForConditionalGeneration.from_pretrained(path), lm_lora_config(r=4, lora_alpha=8))
    for name, param in peft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)  # a trained adapter's B is not zero
    peft.save_pretrained(tmp_path / "adapter")
    peft.merge_and_unload().save_pretrained(tmp_path / "merged")
    with caplog.at_level("INFO"):
        model, _ = load_quantized(tmp_path / "adapter", bitsandbytes_config(4), merge_adapter=True, device="cpu")
    assert "in full precision" in caplog.text
    reference = LlavaForConditionalGeneration.from_pretrained(tmp_path / "merged",
                                                              quantization_config=bitsandbytes_config(4))
    for (name, value), (_, expected) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(value, expected), name


def test_a_missing_bitsandbytes_names_the_extra(monkeypatch):
    import sys

    from hf_llava._extras import MissingExtraError

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'hf-llava\[quant\]'"):
        bitsandbytes_config(4)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (bfloat16 4-bit compute, GPU memory)")


@needs_cuda
def test_cuda_4bit_computes_in_bfloat16(saved):
    path, full, processor = saved
    config = bitsandbytes_config(4, device="cuda")
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    model = LlavaForConditionalGeneration.from_pretrained(path, quantization_config=config)
    assert model.device.type == "cuda" and model.model.language_model.layers[0].self_attn.q_proj.compute_dtype \
        == torch.bfloat16
    inputs = _inputs(processor)
    with torch.no_grad():
        logits = model(**inputs.to("cuda")).logits[0, -1].float().cpu()
        reference = full(**_inputs(processor)).logits[0, -1]
    assert torch.corrcoef(torch.stack([logits, reference]))[0, 1] > 0.9


@needs_cuda
def test_cuda_a_7b_shaped_llava_fits_in_4bit(tmp_path):
    """LLaVA-1.5 7B's shapes (CLIP ViT-L/14-336, Vicuna-7B), random weights saved in bfloat16 and loaded in 4-bit:
    the LM's 6.6B parameters at ~0.5 byte each, the tower (0.3B) and projector in bfloat16."""
    config = tiny.build_config(tiny.build_tokenizer(), vision_hidden_size=1024, vision_layers=24, image_size=336,
                               patch_size=14, hidden_size=4096, num_layers=32, num_heads=32, intermediate_size=11008)
    config.vision_config.intermediate_size = 4096
    config.text_config.vocab_size = 32064
    with torch.device("cuda"):
        model = LlavaForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "7b")
    del model
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = LlavaForConditionalGeneration.from_pretrained(tmp_path / "7b", quantization_config=bitsandbytes_config(4))
    footprint = model.get_memory_footprint()
    assert footprint < 5.5 * 2**30, footprint  # bfloat16: 14 GB
    assert torch.cuda.max_memory_allocated() < 7 * 2**30
