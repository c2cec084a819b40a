"""Auto classes, pipeline, trust_remote_code loading, Hub cache layout, push_to_hub, from_vision_and_text."""

import json
import os
import shutil
import subprocess
import sys

import huggingface_hub
import torch
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    pipeline,
)

from hf_llava import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, from_vision_and_text
from hf_llava._compat import auto_model_classes
from hf_llava.tiny import build_tokenizer, demo_image


def test_auto_classes_resolve_to_ours(saved_llava, tiny_model):
    assert type(AutoConfig.from_pretrained(saved_llava)) is LlavaConfig
    for auto in auto_model_classes():  # AutoModelForImageTextToText, + AutoModelForVision2Seq on 4.57
        model = auto.from_pretrained(saved_llava)
        assert type(model) is LlavaForConditionalGeneration
        for name, tensor in tiny_model.state_dict().items():
            assert torch.equal(model.state_dict()[name], tensor), name
    assert type(AutoProcessor.from_pretrained(saved_llava)) is LlavaProcessor


def test_saved_folder_declares_remote_code(saved_llava):
    config = json.loads((saved_llava / "config.json").read_text())
    assert config["model_type"] == "hf_llava"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_llava.LlavaConfig",
        "AutoModelForImageTextToText": "modeling_llava.LlavaForConditionalGeneration",
        "AutoModelForVision2Seq": "modeling_llava.LlavaForConditionalGeneration",
    }
    for name in ("configuration_llava.py", "modeling_llava.py", "processing_llava.py", "chat_templates.py"):
        assert (saved_llava / name).is_file(), name
    # transformers 5 writes one nested processor_config.json; 4.57 a file per part
    for name in ("tokenizer_config.json", "preprocessor_config.json", "processor_config.json"):
        if (saved_llava / name).is_file():
            assert "processor_class" not in (saved_llava / name).read_text(), name


def test_pipeline_image_text_to_text(saved_llava, tiny_model, tiny_processor):
    pipe = pipeline("image-text-to-text", model=str(saved_llava))
    assert type(pipe.model) is LlavaForConditionalGeneration
    messages = [{"role": "user", "content": [{"type": "image", "image": demo_image()},
                                             {"type": "text", "text": "What is shown?"}]}]
    result = pipe(text=messages, max_new_tokens=6, do_sample=False, return_full_text=False)
    # the same greedy answer as calling the model directly
    prompt = tiny_processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = tiny_processor(images=demo_image(), text=prompt, return_tensors="pt")
    direct = tiny_model.generate(**inputs, max_new_tokens=6, do_sample=False)
    expected = tiny_processor.decode(direct[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert result[0]["generated_text"] == expected


REMOTE_CODE_SCRIPT = """
import sys, torch
import transformers
from transformers import AutoModelForImageTextToText, AutoProcessor
path = sys.argv[1]
model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)
if hasattr(transformers, "AutoModelForVision2Seq"):  # 4.57
    vision2seq = transformers.AutoModelForVision2Seq.from_pretrained(path, trust_remote_code=True)
    assert type(vision2seq).__name__ == "LlavaForConditionalGeneration"
processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
assert "hf_llava" not in sys.modules, "hf_llava was imported"
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
inputs = processor(text="USER: hi ASSISTANT:", return_tensors="pt")
print(model.generate(**inputs, max_new_tokens=5, do_sample=False)[0].tolist())
"""


def test_trust_remote_code_in_a_fresh_python(saved_llava, tiny_model, tiny_processor, tmp_path):
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", REMOTE_CODE_SCRIPT, str(saved_llava)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    inputs = tiny_processor(text="USER: hi ASSISTANT:", return_tensors="pt")
    expected = tiny_model.generate(**inputs, max_new_tokens=5, do_sample=False)[0].tolist()
    assert done.stdout.strip().splitlines()[-1] == str(expected)


QUIET_SCRIPT = r"""
import sys
import warnings

warnings.simplefilter("default")  # deprecation warnings too
import hf_llava
from hf_llava.tiny import demo_image
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained(sys.argv[1])
processor = AutoProcessor.from_pretrained(sys.argv[1])
messages = [{"role": "user", "content": [{"type": "image", "image": demo_image()}, {"type": "text", "text": "Hi"}]}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                       return_tensors="pt")
print(model.generate(**inputs, max_new_tokens=3, do_sample=False).shape)
"""


def test_the_normal_path_is_quiet(saved_llava):
    """Load, template, tokenize, generate in a fresh Python (transformers warns once per process): nothing is
    printed but the weights-loading bar (no slow / fast image processor notice, no deprecation, no fallback)."""
    done = subprocess.run([sys.executable, "-c", QUIET_SCRIPT, str(saved_llava)],
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # transformers 5 draws a "Loading weights" progress bar (carriage returns); anything else is a message
    lines = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert [line for line in lines if not line.startswith("Loading weights")] == []


def fake_hub(monkeypatch, root):
    """Replace the Hub's network calls with a local folder store, laid out as the Hub cache."""
    def create_repo(self, repo_id, **kwargs):
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, repo_id, folder_path, **kwargs):
        snapshot = root / f"models--{repo_id.replace('/', '--')}"
        revision = "0" * 40
        shutil.copytree(folder_path, snapshot / "snapshots" / revision)
        (snapshot / "refs").mkdir(parents=True)
        (snapshot / "refs" / "main").write_text(revision)
        return revision

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)


def test_push_to_hub_writes_a_model_card_and_loads_offline_from_the_cache(
        tmp_path, monkeypatch, tiny_model, tiny_processor):
    cache = tmp_path / "hub"
    fake_hub(monkeypatch, cache)
    tiny_model.push_to_hub("someone/tiny-llava", processor=tiny_processor, base_models=["openai/clip", "lmsys/vicuna"])
    snapshot = cache / "models--someone--tiny-llava" / "snapshots" / ("0" * 40)
    card = huggingface_hub.ModelCard.load(snapshot / "README.md")
    assert card.data.pipeline_tag == "image-text-to-text"
    assert card.data.library_name == "transformers"
    assert card.data.base_model == ["openai/clip", "lmsys/vicuna"]
    assert "hf-llava" in card.data.tags
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = AutoModelForImageTextToText.from_pretrained("someone/tiny-llava", cache_dir=cache)
    processor = AutoProcessor.from_pretrained("someone/tiny-llava", cache_dir=cache)
    assert type(model) is LlavaForConditionalGeneration and type(processor) is LlavaProcessor
    assert torch.equal(model.lm_head.weight, tiny_model.lm_head.weight)


def test_from_vision_and_text(pretrained_parts):
    clip_path, llama_path, clip, llama = pretrained_parts
    model, processor = from_vision_and_text(str(clip_path), str(llama_path))
    tokenizer = AutoTokenizer.from_pretrained(llama_path)
    assert model.config.image_token_id == processor.image_token_id
    assert processor.tokenizer.pad_token is not None
    assert model.get_input_embeddings().weight.shape[0] == len(processor.tokenizer) == len(tokenizer) + 2
    tower = type(model.vision_tower).from_pretrained(clip_path)  # the tower as transformers loads it
    for name, tensor in tower.state_dict().items():
        assert torch.equal(model.vision_tower.state_dict()[name], tensor), name
    n = len(tokenizer)
    assert torch.equal(model.get_input_embeddings().weight[:n], llama.model.embed_tokens.weight)
    up_proj = model.model.language_model.layers[0].mlp.up_proj.weight
    assert torch.equal(up_proj, llama.model.layers[0].mlp.up_proj.weight)
    assert model.config.base_models == [str(clip_path), str(llama_path)]
    assert not any(p.is_meta for p in model.parameters())
    # the projector starts as LLaVA's: normal(0, initializer_range), zero bias (not torch's uniform default, std
    # ~0.1 here), and a save / load keeps it (transformers 5 also runs a default init on custom models)
    projector = model.multi_modal_projector
    std = model.config.text_config.initializer_range
    assert abs(projector.linear_1.weight.std().item() - std) < 0.3 * std and not projector.linear_1.bias.any()
    model.save_pretrained(clip_path.parent / "built")
    reloaded = LlavaForConditionalGeneration.from_pretrained(clip_path.parent / "built")
    for name, tensor in projector.state_dict().items():
        assert torch.equal(reloaded.multi_modal_projector.state_dict()[name], tensor), name
    inputs = processor(images=demo_image(), text="USER: <image>\nWhat? ASSISTANT:", return_tensors="pt")
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == model.config.image_seq_length == 4
    assert inputs["pixel_values"].shape == (1, 3, 28, 28)
    assert model.generate(**inputs, max_new_tokens=2, do_sample=False).shape[1] == inputs["input_ids"].shape[1] + 2


def test_saved_weights_load_back_with_load_state_dict(saved_llava, tiny_config):
    """save_pretrained writes transformers' legacy llava names; load_state_dict (Trainer's resume path) takes them."""
    from safetensors.torch import load_file

    state = load_file(saved_llava / "model.safetensors")
    # transformers 4.57's on-disk llava layout on both lines (5.x's CLIP has no `vision_model.` level in memory)
    layout = (
        "language_model.model.", "language_model.lm_head.", "vision_tower.vision_model.", "multi_modal_projector.",
    )
    assert all(k.startswith(layout) for k in state) and any(k.startswith("vision_tower.vision_model.") for k in state)
    fresh = LlavaForConditionalGeneration(tiny_config)
    result = fresh.load_state_dict(state, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    reference = LlavaForConditionalGeneration.from_pretrained(saved_llava)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name


def test_from_vision_and_text_siglip_and_a_tied_qwen2(tmp_path):
    """A SigLIP tower (no CLS, no crop) + a Qwen2 LM with tied, padded embeddings and its own stop tokens."""
    from transformers import (
        GenerationConfig, Qwen2Config, Qwen2ForCausalLM, SiglipConfig, SiglipImageProcessor, SiglipModel,
    )

    torch.manual_seed(0)
    siglip = SiglipModel(SiglipConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 42, "patch_size": 14},
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "vocab_size": 99}))
    siglip.save_pretrained(tmp_path / "siglip")
    SiglipImageProcessor(size={"height": 42, "width": 42}).save_pretrained(tmp_path / "siglip")
    tokenizer = build_tokenizer(llava_tokens=False)
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer) + 16, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                        tie_word_embeddings=True))
    qwen.generation_config = GenerationConfig(eos_token_id=[2, 7], do_sample=True, temperature=0.7)
    qwen.save_pretrained(tmp_path / "qwen")
    tokenizer.save_pretrained(tmp_path / "qwen")

    model, processor = from_vision_and_text(str(tmp_path / "siglip"), str(tmp_path / "qwen"))
    assert model.config.vision_feature_select_strategy == processor.vision_feature_select_strategy == "full"
    assert model.config.image_seq_length == 9  # 3 x 3 patches, none dropped
    # the padded vocabulary (len(tokenizer) + 16 rows) has room for the 2 new tokens: no resize, still tied
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) + 16
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert model.generation_config.eos_token_id == [2, 7] and model.generation_config.temperature == 0.7
    assert model.generation_config.pad_token_id == processor.tokenizer.pad_token_id
    image = demo_image(64)  # 64 x 48: padded to square, resized to 42 x 42, no crop
    inputs = processor(images=image, text="USER: <image>\nWhat? ASSISTANT:", return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 42, 42)
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == 9
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
