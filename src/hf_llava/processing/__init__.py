"""Processing: image loading, the LLaVA chat templates and `LlavaProcessor`."""

from .chat_templates import (CHAT_FORMATS, CHAT_TEMPLATES, ChatFormat, chat_format, check_end_of_turn,
                             get_chat_template)
from .image_loading import expand_to_square, load_image, load_images, mean_colour
from .processing_llava import LlavaProcessor, add_llava_tokens

__all__ = [
    "CHAT_FORMATS",
    "CHAT_TEMPLATES",
    "ChatFormat",
    "chat_format",
    "check_end_of_turn",
    "expand_to_square",
    "LlavaProcessor",
    "add_llava_tokens",
    "get_chat_template",
    "load_image",
    "load_images",
    "mean_colour",
]
