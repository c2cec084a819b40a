"""Small LLaVA models built offline from configs: the demo's default, the tests' fixtures, the benchmarks.

`build_tokenizer` trains a byte-level BPE tokenizer with `tokenizers` on an embedded corpus (Llama's
special tokens `<s>`, `</s>`, `<unk>`, plus `<pad>` and `<image>`); `build_llava` builds a random CLIP
vision tower + Llama (or Mistral / Qwen2) LM of the requested size; `build_processor` the matching
processor. Nothing is downloaded.
"""

import string
from typing import Optional

import numpy as np
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from ._compat import pil_image_processor
from .builder import processor_for_config
from .modeling import LlavaConfig, LlavaForConditionalGeneration
from .processing import LlavaProcessor

_CORPUS = """
A chat between a curious user and an artificial intelligence assistant.
The assistant gives helpful, detailed, and polite answers to the user's questions.
USER: What is shown in the image? ASSISTANT: The image shows a red square on a blue background.
What color is the circle? The circle is green. Describe the image in detail.
There is a cat sitting on a wooden table next to a cup of coffee and a laptop.
How many people are in the picture? Two people are walking a dog in the park.
A photo of a bus on a city street, a stop sign, a bicycle, a tree, the sky, clouds and the sun.
Human: Where is the dog? Assistant: The dog is under the table, near the window.
Answer the questions. yes no left right top bottom large small one two three four five.
[INST] <<SYS>> You are a helpful language and vision assistant. <</SYS>> [/INST]
"""


def build_tokenizer(
    vocab_size: int = 512, llava_tokens: bool = True, style: str = "byte_level", eos_token: str = "</s>"
) -> PreTrainedTokenizerFast:
    """A BPE tokenizer with Llama's special tokens, trained on a small corpus.

    `style="byte_level"` (GPT-2 / Llama-3 / Qwen2-like) or `"metaspace"` (the sentencepiece convention of
    Llama-2 / Vicuna in legacy mode: spaces become `▁` glued to the next word, and every text segment,
    also after a special token, gets a leading `▁`). With `llava_tokens` it also has `<pad>` and
    `<image>`; without, it is like a plain Llama tokenizer. `eos_token` replaces `</s>` (e.g. `"<|endoftext|>"`,
    GPT-2 / Qwen2 base style: `</s>` is then ordinary text).
    """
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    if style == "byte_level":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    elif style == "metaspace":
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
        alphabet = sorted(set(string.printable) - set(" \t\r\x0b\x0c") | {"\u2581"})
    else:
        raise ValueError(f"style={style!r}: expected 'byte_level' or 'metaspace'.")
    specials = ["<unk>", "<s>", eos_token] + (["<pad>"] if llava_tokens else [])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False,
    )
    tok.train_from_iterator([line for line in _CORPUS.splitlines() if line] * 4, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    extra = {"pad_token": "<pad>", "additional_special_tokens": ["<image>"]} if llava_tokens else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token=eos_token, unk_token="<unk>", padding_side="left",
        model_input_names=["input_ids", "attention_mask"], **extra,
    )


def build_config(
    tokenizer: PreTrainedTokenizerFast,
    text_model_type: str = "llama",
    vision_hidden_size: int = 32,
    vision_layers: int = 2,
    image_size: int = 30,
    patch_size: int = 6,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: Optional[int] = None,
    **config_kwargs,
) -> LlavaConfig:
    """A LlavaConfig with a CLIP tower and a `text_model_type` LM sized by the arguments."""
    vision_config = {
        "model_type": "clip_vision_model",
        "hidden_size": vision_hidden_size,
        "intermediate_size": vision_hidden_size * 4,
        "num_hidden_layers": vision_layers,
        "num_attention_heads": max(1, vision_hidden_size // 16),
        "image_size": image_size,
        "patch_size": patch_size,
        "projection_dim": vision_hidden_size,
    }
    text_config = {
        "model_type": text_model_type,
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size or hidden_size * 4,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_heads,
        "max_position_embeddings": 2048,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "tie_word_embeddings": False,
    }
    return LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
        **config_kwargs,
    )


def build_processor(
    tokenizer: PreTrainedTokenizerFast, config: LlavaConfig, chat_template: str = "vicuna_v1", pad: bool = True
) -> LlavaProcessor:
    """The processor for `config`: AnyRes tiles for an `anyres` config, else LLaVA-1.5 pad-to-square (`pad=True`)
    or CLIP's crop."""
    size = config.vision_config.image_size
    common = dict(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    if config.image_aspect_ratio == "anyres":
        image_processor = pil_image_processor("LlavaNextImageProcessor")(
            image_grid_pinpoints=config.image_grid_pinpoints, **common)
    elif pad:
        image_processor = pil_image_processor("LlavaImageProcessor")(do_pad=True, **common)
    else:
        image_processor = pil_image_processor("CLIPImageProcessor")(**common)
    return processor_for_config(image_processor, tokenizer, config, chat_template)


def build_llava(seed: int = 0, **kwargs) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A random tiny LLaVA and its processor; `kwargs` go to `build_config`."""
    import torch

    tokenizer = build_tokenizer()
    config = build_config(tokenizer, **kwargs)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    return model, build_processor(tokenizer, config)


def demo_image(size: int = 64, seed: int = 0) -> Image.Image:
    """A synthetic picture: a red square and a green disc on a blue background (not square: 4:3)."""
    rng = np.random.default_rng(seed)
    height, width = size * 3 // 4, size
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    canvas[..., 2] = 180
    canvas[height // 4: height // 2, width // 8: width // 3] = (220, 30, 30)
    yy, xx = np.mgrid[:height, :width]
    disc = (yy - height * 0.6) ** 2 + (xx - width * 0.7) ** 2 < (height / 5) ** 2
    canvas[disc] = (30, 200, 60)
    noise = rng.integers(0, 12, size=canvas.shape, dtype=np.uint8)
    return Image.fromarray(canvas + noise)


__all__ = ["build_config", "build_llava", "build_processor", "build_tokenizer", "demo_image"]
