"""Builders of tiny checkpoints in the original LLaVA layout, derived from the tiny hf-llava model."""

import copy
import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

import hf_llava
from hf_llava import tiny

IMAGE_ID = 512  # `<image>` in the tiny tokenizer: the original tokenizer is the same minus this last token
# Where transformers 4.57's llava (and llava_next: `image_newline`) keeps its weights on disk (llava-hf on the Hub,
# what vLLM / SGLang read).
LLAVA_ON_DISK = ("language_model.model.", "language_model.lm_head.", "vision_tower.vision_model.",
                 "multi_modal_projector.", "image_newline")


def original_state(model) -> dict:
    """The tiny hf-llava model's weights under original LLaVA names, vocabulary without `<image>`."""
    state = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.clone()
        if name in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
            tensor = tensor[:IMAGE_ID].clone()
        if name.startswith("model.language_model."):
            state["model." + name[len("model.language_model."):]] = tensor
        elif name.startswith("model.vision_tower."):
            # the original saved a whole CLIPVisionModel: `vision_model.` level included (5.x drops it in memory)
            tower_key = name[len("model.vision_tower."):]
            tower_key = tower_key if tower_key.startswith("vision_model.") else "vision_model." + tower_key
            state["model.vision_tower.vision_tower." + tower_key] = tensor
        elif name.startswith("model.multi_modal_projector.linear_"):
            layer, param = name[len("model.multi_modal_projector.linear_"):].split(".")
            state[f"model.mm_projector.{2 * (int(layer) - 1)}.{param}"] = tensor
        else:
            state[name] = tensor
    return state


def original_config(model, **mm) -> dict:
    """An original LLaVA-1.5 config.json: the Llama fields plus the `mm_*` fields."""
    text = model.config.text_config.to_dict()
    for key in ("dtype", "torch_dtype", "transformers_version", "architectures", "_name_or_path"):
        text.pop(key, None)
    return {
        **text,
        "vocab_size": IMAGE_ID,
        "model_type": "llava_llama",
        "architectures": ["LlavaLlamaForCausalLM"],
        "torch_dtype": "float32",
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "mm_hidden_size": model.config.vision_config.hidden_size,
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "image_aspect_ratio": "pad",
        **mm,
    }


def original_next_config(model, **mm) -> dict:
    """An original LLaVA-NeXT config.json: the 1.5 fields plus AnyRes, its grid as the original lists it,
    [width, height] pairs (ours are [height, width]); `mm` overrides."""
    return original_config(model, **{
        "image_aspect_ratio": "anyres",
        "mm_patch_merge_type": model.config.patch_merge_type,
        "image_grid_pinpoints": [[width, height] for height, width in model.config.image_grid_pinpoints],
        "unfreeze_mm_vision_tower": True,
        "mm_vision_tower_lr": 2e-6,
        **mm,
    })


def write_original_next(path, model, tokenizer_dir, **mm):
    """A full LLaVA-NeXT checkpoint of `model` at `path`, vision tower and `model.image_newline` saved (as the
    released 1.6 ones, which trained the tower), one safetensors file."""
    shutil.copytree(tokenizer_dir, path)
    save_file({k: v.contiguous() for k, v in original_state(model).items()}, path / "model.safetensors",
              metadata={"format": "pt"})
    write_json(path / "config.json", original_next_config(model, **mm))
    return path


def write_json(path, data) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)


@pytest.fixture()
def original_tokenizer_dir(tmp_path, tokenizer):
    """The tiny tokenizer without `<image>` (as Vicuna's: the original spliced at the sentinel -200)."""
    path = tmp_path / "original-tokenizer"
    tokenizer.save_pretrained(path)
    data = json.loads((path / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<image>"]
    write_json(path / "tokenizer.json", data)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.get("added_tokens_decoder", {}).pop(str(IMAGE_ID), None)  # 4.57 lists added tokens here; 5.x does not
    config.pop("additional_special_tokens", None)  # 4.57's name
    config.pop("extra_special_tokens", None)  # 5.x's name
    write_json(path / "tokenizer_config.json", config)
    if (path / "special_tokens_map.json").is_file():  # written by 4.57 only
        special = json.loads((path / "special_tokens_map.json").read_text())
        special.pop("additional_special_tokens", None)
        write_json(path / "special_tokens_map.json", special)
    return path


@pytest.fixture()
def clip_dir(tmp_path, tiny_model, tiny_config, tokenizer):
    """A CLIP vision-tower folder (CLIPVisionModel weights + CLIPImageProcessor), as --vision-tower takes."""
    path = tmp_path / "clip"
    tiny_model.model.vision_tower.save_pretrained(path)
    tiny.build_processor(tokenizer, tiny_config, pad=False).image_processor.save_pretrained(path)
    return path


@pytest.fixture()
def next_clip_dir(tmp_path, next_model, next_config, tokenizer):
    """The NeXT tower's CLIP folder (16px tiles): its config and the image processor every tile goes through."""
    path = tmp_path / "next-clip"
    next_model.model.vision_tower.save_pretrained(path)
    one_tile = hf_llava.LlavaConfig.from_dict({**next_config.to_dict(), "image_aspect_ratio": "square"})
    tiny.build_processor(tokenizer, one_tile, pad=False).image_processor.save_pretrained(path)
    return path


@pytest.fixture()
def llama_base_dir(tmp_path, tiny_model, original_tokenizer_dir):
    """A plain Llama causal-LM folder (the `--model-base`): the tiny model's LM, vocabulary without `<image>`."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    fields = original_config(tiny_model)
    fields = {k: v for k, v in fields.items() if not k.startswith("mm_") and k != "image_aspect_ratio"}
    fields.update(model_type="llama", architectures=["LlamaForCausalLM"])
    config = LlamaConfig(**fields)
    lm = LlamaForCausalLM(config)
    lm_keys = ("model.layers", "model.embed", "model.norm", "lm_head")
    state = {k: v for k, v in original_state(tiny_model).items() if k.startswith(lm_keys)}
    lm.load_state_dict(state, strict=True)
    path = tmp_path / "vicuna"
    lm.save_pretrained(path)
    AutoTokenizer.from_pretrained(original_tokenizer_dir).save_pretrained(path)
    return path


def with_mean_rows(model):
    """What conversion of an original checkpoint should give: the model, `<image>` rows = mean of the others."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for weight in (model.get_input_embeddings().weight, model.lm_head.weight):
            weight[IMAGE_ID] = weight[:IMAGE_ID].mean(dim=0)
    return model


def assert_same_outputs(model, reference, processor, images, atol: float = 1e-5) -> None:
    """Same logits (max abs diff <= atol) and the same greedy tokens on a prompt with an image."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=images[:1], text=prompt, return_tensors="pt")
    with torch.no_grad():
        diff = (model(**inputs).logits - reference(**inputs).logits).abs().max().item()
        assert diff <= atol, f"max abs logit diff {diff}"
        kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
        assert torch.equal(model.generate(**inputs, **kwargs), reference.generate(**inputs, **kwargs))


def _write_bin_shards(state: dict, folder) -> None:
    """Two `pytorch_model-*.bin` shards and their index, as the original training scripts save them."""
    names = list(state)
    half = len(names) // 2
    halves = {"pytorch_model-00001-of-00002.bin": names[:half], "pytorch_model-00002-of-00002.bin": names[half:]}
    for file, keys in halves.items():
        torch.save({k: state[k] for k in keys}, folder / file)
    weight_map = {k: f for f, ks in halves.items() for k in ks}
    write_json(folder / "pytorch_model.bin.index.json", {"metadata": {}, "weight_map": weight_map})


@pytest.fixture()
def original_dir(tmp_path, tiny_model, original_tokenizer_dir):
    """A full LLaVA-1.5 checkpoint, vision tower not saved (as the released ones), with legacy rotary buffers."""
    path = tmp_path / "llava-v1.5"
    shutil.copytree(original_tokenizer_dir, path)
    state = {k: v for k, v in original_state(tiny_model).items() if not k.startswith("model.vision_tower.")}
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    _write_bin_shards(state, path)
    write_json(path / "config.json", original_config(tiny_model))
    return path


@pytest.fixture(scope="session")
def conv():
    """The helpers above, for the test modules (conftest modules are not importable under importlib mode)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        IMAGE_ID=IMAGE_ID, LLAVA_ON_DISK=LLAVA_ON_DISK, original_state=original_state,
        original_config=original_config, write_original_next=write_original_next, write_json=write_json,
        with_mean_rows=with_mean_rows, assert_same_outputs=assert_same_outputs,
    )
