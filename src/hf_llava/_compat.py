"""Every difference between the two transformers lines we support (4.57 and 5.x), named once.

Each entry says what changed and in which version; code elsewhere asks this module instead of
checking versions itself.

Which line is installed is decided in one place per world, by the version, never by whether a private module
imports (a release that moves one would then silently take the 4.57 path): `TRANSFORMERS_5` below for the
package, `configuration_llava.TRANSFORMERS_5` for the model files copied next to checkpoints for
`trust_remote_code` (configuration_llava.py, modeling_llava.py), which load alone and may not import this module;
on their 5.x branch 5.x's private modules are imported unconditionally, so a move fails loudly. The copied
processor file (processing_llava.py) imports no model file and detects its differences where it handles them.
The differences the copied files meet, listed here so that this module stays the one catalogue:
- 5.0 `save_pretrained` writes the image processor nested in `processor_config.json`, the tokenizer class as
  `TokenizersBackend` and `extra_special_tokens` as a list; 4.57 reads none of these.
  `processing_llava.write_portable_processor_files` rewrites them in 4.57's layout (5.x reads it too).
- 5.0 LM configs keep RoPE in `rope_parameters` only; 4.57 reads `rope_theta` / `rope_scaling`
  (`LlavaConfig.to_json_string` writes both through `configuration_llava.add_legacy_rope_fields`; `to_dict`
  stays the LM config's own, so a dict round trip is stable).
- 5.0 flattens CLIP / SigLIP vision models (no `vision_model.` level) and renames checkpoint keys through
  `transformers.conversion_mapping` / `transformers.core_model_loading`; `modeling_llava.LlavaPreTrainedModel.
  checkpoint_key_renamer` / `saved_key_names` ask the installed line how it renames, so the on-disk names stay
  4.57's llava layout on both lines.
- 5.x `get_image_features` returns a `BaseModelOutputWithPooling` (the visual tokens as `pooler_output`, the
  tower's states beside them) where 4.57 returns the tokens; ours follows the installed line, and 5.x's outputs
  carry the encoder's output as `image_outputs` beside our `image_hidden_states`.
- 5.x tensor parallelism shards the LM's `embed_tokens`: `LlavaForConditionalGeneration._tp_plan` shards the
  tied `lm_head` with it, as 5.x's llava.
- 5.0 image processors have backends (`backend="pil"`, replacing `use_fast=False`): `processing_llava` asks
  for the PIL one and keeps the option away from the tokenizer.
- 5.25 renames `TrainingArguments.gradient_checkpointing(_kwargs)` to `activation_checkpointing(_kwargs)`; the old
  names warn when set, and TRL 1.16 sets the old one: `trainers.configs` takes the old names on both lines and moves
  them where the new field exists (a public dataclass field, checked there so that this module imports no trainer).
- 5.25 renames the KV cache `past_key_values` -> `cache` (forward keyword and output field; the old name warns):
  `modeling_llava.CACHE_NAME` is the installed line's name; its forwards take either (the old one warns on
  5.25+, as transformers' models do) and its outputs declare that one. Code outside the copied files uses
  `CACHE_NAME` below.
- bitsandbytes loading (`quantization_config`): with no `llm_int8_skip_modules` both lines keep transformers' own
  choice (the LM head / tied and last modules, plus `_keep_in_fp32_modules`) and quantise the rest, the vision tower
  included; a given list replaces that choice. They match the names differently: 4.57 by substring (`name + "."` in
  the module path), 5.x as a regex anchored at the start or as a suffix, so only full module paths
  (`model.vision_tower`) mean the same on both. 4.57 also loads what it does not quantise in float16 when no dtype
  is given (5.x: the checkpoint's dtype). `modeling_llava.LlavaPreTrainedModel.from_pretrained` fills the skip list
  with full paths (`_quantization_skip_modules`: tower, projector, LM head) and asks for `dtype="auto"`, so both
  lines load the same model.
"""

import transformers
from packaging.version import Version
from transformers.modeling_outputs import BaseModelOutputWithPast

TRANSFORMERS_VERSION = Version(transformers.__version__)
# The package's one test for the 5.x line (the copied files': `configuration_llava.TRANSFORMERS_5`).
TRANSFORMERS_5 = TRANSFORMERS_VERSION.major >= 5
# 5.0 removed `AutoModelForVision2Seq`; `AutoModelForImageTextToText` is the name on both lines.
HAS_VISION2SEQ = hasattr(transformers, "AutoModelForVision2Seq")

# 5.0 split image processors into backends: `LlavaImageProcessor` needs torchvision (else it warns and falls
# back) and `LlavaImageProcessorPil` is the PIL/numpy one that 4.57 called `LlavaImageProcessor`.
HAS_IMAGE_BACKENDS = hasattr(transformers, "LlavaImageProcessorPil")
# How to ask `AutoImageProcessor.from_pretrained` for the PIL/numpy processor (torchvision is not a dependency).
PIL_IMAGE_PROCESSOR_KWARGS = {"backend": "pil"} if HAS_IMAGE_BACKENDS else {"use_fast": False}


# 5.25: the KV cache's keyword / output field (`past_key_values` before; the old name warns and is to go in 5.40).
CACHE_NAME = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


# 5.0: `GenerationConfig()` leaves every field None ("unset") and `generate()` fills the unset ones from the
# model's generation config, then from `GenerationConfig._get_default_generation_params()`; 4.57 sets those
# defaults in `GenerationConfig()` itself.
GENERATION_DEFAULTS_ON_USE = TRANSFORMERS_5


def complete_generation_config(config, model_config=None):
    """`config` (changed in place and returned) with its unset fields as `generate()` fills them on this line:
    from `model_config` (the model's own generation config), then transformers' global defaults."""
    if GENERATION_DEFAULTS_ON_USE:
        if model_config is not None and model_config is not config:
            config.update(**model_config.to_dict(), defaults_only=True)
        config.update(**transformers.GenerationConfig._get_default_generation_params(), defaults_only=True)
    return config


def pil_image_processor(name: str):
    """The PIL/numpy image processor class called `name` on 4.57 (e.g. "LlavaImageProcessor", "CLIPImageProcessor")."""
    return getattr(transformers, name + "Pil" if HAS_IMAGE_BACKENDS else name)


def image_features(output):
    """The projected visual tokens `(num_images, num_image_tokens, text_hidden)` from `get_image_features`: 5.0
    returns a `BaseModelOutputWithPooling` holding them as `pooler_output` (as 5.x's llava does), 4.57 the tensor."""
    return getattr(output, "pooler_output", output)


def auto_model_classes() -> list:
    """The Auto classes an image-text-to-text model registers with on this line."""
    names = ["AutoModelForImageTextToText"] + (["AutoModelForVision2Seq"] if HAS_VISION2SEQ else [])
    return [getattr(transformers, name) for name in names]


__all__ = [
    "CACHE_NAME", "GENERATION_DEFAULTS_ON_USE", "HAS_IMAGE_BACKENDS", "HAS_VISION2SEQ", "PIL_IMAGE_PROCESSOR_KWARGS",
    "TRANSFORMERS_5", "TRANSFORMERS_VERSION", "auto_model_classes", "complete_generation_config", "image_features",
    "pil_image_processor",
]
