"""LLaVA conversation data: reading and validating LLaVA JSON/JSONL, and the training collator."""

from .collator import IGNORE_INDEX, LlavaDataCollator, LlavaMaskError
from .llava_json import BAD_IMAGE_POLICIES, load_llava_dataset, read_llava_records, validate_llava_records

__all__ = [
    "BAD_IMAGE_POLICIES",
    "IGNORE_INDEX",
    "LlavaDataCollator",
    "LlavaMaskError",
    "load_llava_dataset",
    "read_llava_records",
    "validate_llava_records",
]
