"""hf-llava: LLaVA (Visual Instruction Tuning) on the Hugging Face stack.

Importing this package registers `LlavaConfig` (`model_type="hf_llava"`), `LlavaProcessor` and
`LlavaForConditionalGeneration` with transformers' `AutoConfig`, `AutoProcessor`,
`AutoModelForVision2Seq` and `AutoModelForImageTextToText`, and marks them for `auto_map`, so saved
folders also load with `trust_remote_code=True` where hf-llava is not installed.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForVision2Seq,
    AutoProcessor,
)

from .hub import push_to_hub, write_model_card
from .modeling import LlavaConfig, LlavaForConditionalGeneration, LlavaModel
from .processing import CHAT_TEMPLATES, LlavaProcessor, add_llava_tokens

__version__ = "0.1.0"


def _register() -> None:
    AutoConfig.register(LlavaConfig.model_type, LlavaConfig, exist_ok=True)
    AutoModel.register(LlavaConfig, LlavaModel, exist_ok=True)
    AutoModelForVision2Seq.register(LlavaConfig, LlavaForConditionalGeneration, exist_ok=True)
    AutoModelForImageTextToText.register(LlavaConfig, LlavaForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(LlavaConfig, LlavaProcessor, exist_ok=True)
    # `auto_map` + a copy of the module files in every saved folder (trust_remote_code loading).
    LlavaConfig.register_for_auto_class()
    LlavaForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
    LlavaProcessor.register_for_auto_class("AutoProcessor")


_register()

__all__ = [
    "CHAT_TEMPLATES",
    "LlavaConfig",
    "LlavaForConditionalGeneration",
    "LlavaModel",
    "LlavaProcessor",
    "__version__",
    "add_llava_tokens",
    "push_to_hub",
    "write_model_card",
]
