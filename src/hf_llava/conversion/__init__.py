"""Checkpoint conversion: original LLaVA (haotian-liu/LLaVA, 1.5 and NeXT) -> hf-llava, llava-hf (transformers'
llava and llava_next) <-> hf-llava.

Every conversion accounts for every key (an unused source key or an unfilled target parameter is a
`ConversionError` naming them), writes safetensors shards one at a time, and builds DST in a temporary
folder beside it that is moved into place only when the conversion succeeded.
"""

from .._lazy import lazy_names

__getattr__, __dir__ = lazy_names(__name__, {
    "ConversionError": ".common",
    "convert_hf_llava_to_llava_hf": ".llava_hf",
    "convert_llava_hf_to_hf_llava": ".llava_hf",
    "convert_original_to_hf_llava": ".original",
    "transformers_config": ".llava_hf",
})

__all__ = [
    "ConversionError",
    "convert_hf_llava_to_llava_hf",
    "convert_llava_hf_to_hf_llava",
    "convert_original_to_hf_llava",
    "transformers_config",
]
