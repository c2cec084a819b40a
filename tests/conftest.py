"""Shared fixtures: tiny LLaVA models built from configs, a tokenizer trained on the spot, all offline."""

import os

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
import transformers

import hf_llava
from hf_llava import tiny
from hf_llava._compat import pil_image_processor

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def cli_error():
    """`cli_error(lines, command)` checks the shape every command's usage error shares: one or two lines on
    stderr (never a traceback), the first starting `hf-llava COMMAND: error: `."""

    def check(lines: list, command: str) -> None:
        assert 1 <= len(lines) <= 2, lines  # one or two lines, never a traceback
        assert lines[0].startswith(f"hf-llava {command}: error: "), lines

    return check


@pytest.fixture(scope="session")
def tokenizer():
    """A byte-level BPE tokenizer trained with `tokenizers`, with `<s>`, `</s>`, `<pad>` and `<image>`."""
    return tiny.build_tokenizer()


@pytest.fixture(scope="session")
def tiny_config(tokenizer):
    """CLIP tower (30px images, 6px patches -> 25 visual tokens) + 2-layer Llama, mlp2x_gelu projector."""
    return tiny.build_config(tokenizer)


@pytest.fixture()
def tiny_model(tiny_config):
    torch.manual_seed(0)
    return hf_llava.LlavaForConditionalGeneration(tiny_config).eval()


@pytest.fixture()
def tiny_processor(tokenizer, tiny_config):
    return tiny.build_processor(tokenizer, tiny_config)


@pytest.fixture()
def saved_llava(tmp_path, tiny_model, tiny_processor):
    """A folder with a saved tiny model and processor, as `save_pretrained` writes it."""
    path = tmp_path / "tiny-llava"
    tiny_model.save_pretrained(path)
    tiny_processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def images():
    """Two synthetic pictures of different sizes and aspect ratios."""
    return [tiny.demo_image(64, seed=0), tiny.demo_image(40, seed=1).rotate(90, expand=True)]


@pytest.fixture()
def pretrained_parts(tmp_path):
    """A CLIP checkpoint (full CLIPModel) and a Llama causal-LM checkpoint with its tokenizer, on disk."""
    torch.manual_seed(0)
    clip = transformers.CLIPModel(transformers.CLIPConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 28, "patch_size": 14},
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "vocab_size": 99, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        projection_dim=16))
    clip.save_pretrained(tmp_path / "clip")
    clip_image_processor = pil_image_processor("CLIPImageProcessor")  # the PIL one on both lines (no torchvision)
    image_processor = clip_image_processor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    image_processor.save_pretrained(tmp_path / "clip")
    tokenizer = tiny.build_tokenizer(llava_tokens=False)  # like Llama's: no <image>, no pad token
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=1, num_attention_heads=2))
    llama.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    return tmp_path / "clip", tmp_path / "llama", clip, llama


@pytest.fixture(scope="session")
def next_config(tokenizer):
    """A LLaVA-NeXT (AnyRes) config: CLIP tower on 16px tiles of 4px patches (16 tokens a tile), the released
    1.6 grids in tiles (1x2, 2x1, 2x2, 3x1, 1x3: pinpoints 16x32 ... 16x48), `spatial_unpad` with `image_newline`."""
    return tiny.build_config(tokenizer, image_size=16, patch_size=4, image_aspect_ratio="anyres")


@pytest.fixture()
def next_model(next_config):
    torch.manual_seed(0)
    return hf_llava.LlavaForConditionalGeneration(next_config).eval()


@pytest.fixture()
def next_processor(tokenizer, next_config):
    return tiny.build_processor(tokenizer, next_config)


@pytest.fixture(scope="session")
def next_images():
    """Three aspect ratios that pick three grids: wide (1x3 tiles), tall (3x1), about square (2x2)."""
    return [tiny.demo_image(60, seed=2).resize((60, 18)), tiny.demo_image(40, seed=3).resize((14, 40)),
            tiny.demo_image(36, seed=4).resize((36, 33))]


@pytest.fixture()
def saved_next(tmp_path, next_model, next_processor):
    """A folder with a saved tiny NeXT model and its processor."""
    path = tmp_path / "tiny-llava-next"
    next_model.save_pretrained(path)
    next_processor.save_pretrained(path)
    return path
