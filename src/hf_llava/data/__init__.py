"""LLaVA conversation data: reading and validating LLaVA JSON/JSONL, and the training collator.

The names are imported on first use (`datasets`, torch and transformers load only then).
"""

from .._lazy import lazy_names

__getattr__, __dir__ = lazy_names(__name__, {
    "BAD_IMAGE_POLICIES": ".llava_json",
    "IGNORE_INDEX": ".collator",
    "IMAGE_ASPECT_RATIOS": ".llava_json",
    "IMAGE_POSITIONS": ".llava_json",
    "LlavaDataCollator": ".collator",
    "LlavaMaskError": ".collator",
    "load_llava_dataset": ".llava_json",
    "read_llava_records": ".llava_json",
    "validate_llava_records": ".llava_json",
})

__all__ = [
    "BAD_IMAGE_POLICIES",
    "IGNORE_INDEX",
    "IMAGE_ASPECT_RATIOS",
    "IMAGE_POSITIONS",
    "LlavaDataCollator",
    "LlavaMaskError",
    "load_llava_dataset",
    "read_llava_records",
    "validate_llava_records",
]
