"""Every difference between the two transformers lines we support (4.57 and 5.x), named once.

Each entry says what changed and in which version; code elsewhere asks this module instead of
checking versions itself.

The copied `trust_remote_code` files (modeling/, processing/) load alone and may not import this module, so the
differences they meet are feature-detected where they are handled, with a comment; listed here so that this
module stays the one catalogue:
- 5.0 `save_pretrained` writes the image processor nested in `processor_config.json`, the tokenizer class as
  `TokenizersBackend` and `extra_special_tokens` as a list; 4.57 reads none of these.
  `processing_llava.write_portable_processor_files` rewrites them in 4.57's layout (5.x reads it too).
- 5.0 LM configs keep RoPE in `rope_parameters` only; 4.57 reads `rope_theta` / `rope_scaling`
  (`configuration_llava.add_legacy_rope_fields` writes both).
- 5.0 flattens CLIP / SigLIP vision models (no `vision_model.` level) and renames checkpoint keys through
  `conversion_mapping`; `modeling_llava.LlavaPreTrainedModel.checkpoint_key_renamer` / `saved_key_names` ask
  the installed line how it renames, so the on-disk names stay 4.57's llava layout on both lines.
- 5.0 records hidden states with hooks installed on a model's first recording call
  (`transformers.utils.output_capturing`); `modeling_llava._first_layers` installs them before it hides layers.
- 5.0 image processors have backends (`backend="pil"`, replacing `use_fast=False`): `processing_llava` asks
  for the PIL one and keeps the option away from the tokenizer.
- 5.25 renames the KV cache `past_key_values` -> `cache` (forward keyword and output field; the old name warns):
  `modeling_llava.CACHE_NAME` is the installed line's name; its forwards take either and its outputs declare
  that one. Code outside the copied files uses `CACHE_NAME` below.
"""

import transformers
from packaging.version import Version
from transformers.modeling_outputs import BaseModelOutputWithPast

TRANSFORMERS_VERSION = Version(transformers.__version__)
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
GENERATION_DEFAULTS_ON_USE = hasattr(transformers.GenerationConfig, "_get_default_generation_params")


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


def auto_model_classes() -> list:
    """The Auto classes an image-text-to-text model registers with on this line."""
    names = ["AutoModelForImageTextToText"] + (["AutoModelForVision2Seq"] if HAS_VISION2SEQ else [])
    return [getattr(transformers, name) for name in names]


__all__ = ["CACHE_NAME", "GENERATION_DEFAULTS_ON_USE", "HAS_IMAGE_BACKENDS", "HAS_VISION2SEQ", "PIL_IMAGE_PROCESSOR_KWARGS",
           "TRANSFORMERS_VERSION", "auto_model_classes", "complete_generation_config", "pil_image_processor"]
