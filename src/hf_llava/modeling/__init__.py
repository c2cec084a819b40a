"""The LLaVA model: `LlavaConfig` and `LlavaForConditionalGeneration`."""

from .configuration_llava import PROJECTOR_TYPES, LlavaConfig
from .modeling_llava import (
    LlavaCausalLMOutputWithPast,
    LlavaForConditionalGeneration,
    LlavaModel,
    LlavaMultiModalProjector,
    LlavaPreTrainedModel,
)

from .. import _register_pending  # noqa: E402  (registers the Auto classes once transformers is loaded)

_register_pending()

__all__ = [
    "PROJECTOR_TYPES",
    "LlavaCausalLMOutputWithPast",
    "LlavaConfig",
    "LlavaForConditionalGeneration",
    "LlavaModel",
    "LlavaMultiModalProjector",
    "LlavaPreTrainedModel",
]
