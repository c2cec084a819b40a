"""The LLaVA model: `LlavaConfig` and `LlavaForConditionalGeneration`."""

from .configuration_llava import PROJECTOR_TYPES, LlavaConfig
from .modeling_llava import (
    LlavaCausalLMOutputWithPast,
    LlavaForConditionalGeneration,
    LlavaModel,
    LlavaMultiModalProjector,
    LlavaPreTrainedModel,
)

__all__ = [
    "PROJECTOR_TYPES",
    "LlavaCausalLMOutputWithPast",
    "LlavaConfig",
    "LlavaForConditionalGeneration",
    "LlavaModel",
    "LlavaMultiModalProjector",
    "LlavaPreTrainedModel",
]
