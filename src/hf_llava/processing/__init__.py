"""Processing: image loading, the LLaVA chat templates and `LlavaProcessor`."""

from .chat_templates import CHAT_FORMATS, CHAT_TEMPLATES, ChatFormat, chat_format, get_chat_template
from .image_loading import load_image, load_images
from .processing_llava import LlavaProcessor, add_llava_tokens

__all__ = [
    "CHAT_FORMATS",
    "CHAT_TEMPLATES",
    "ChatFormat",
    "chat_format",
    "LlavaProcessor",
    "add_llava_tokens",
    "get_chat_template",
    "load_image",
    "load_images",
]
