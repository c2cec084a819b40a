"""Every difference between the two transformers lines we support (4.57 and 5.x), named once.

Each entry says what changed and in which version; code elsewhere asks this module instead of
checking versions itself.
"""

import transformers
from packaging.version import Version

TRANSFORMERS_VERSION = Version(transformers.__version__)
# 5.0 removed `AutoModelForVision2Seq`; `AutoModelForImageTextToText` is the name on both lines.
HAS_VISION2SEQ = hasattr(transformers, "AutoModelForVision2Seq")

# 5.0 split image processors into backends: `LlavaImageProcessor` needs torchvision (else it warns and falls
# back) and `LlavaImageProcessorPil` is the PIL/numpy one that 4.57 called `LlavaImageProcessor`.
HAS_IMAGE_BACKENDS = hasattr(transformers, "LlavaImageProcessorPil")
# How to ask `AutoImageProcessor.from_pretrained` for the PIL/numpy processor (torchvision is not a dependency).
PIL_IMAGE_PROCESSOR_KWARGS = {"backend": "pil"} if HAS_IMAGE_BACKENDS else {"use_fast": False}


def pil_image_processor(name: str):
    """The PIL/numpy image processor class called `name` on 4.57 (e.g. "LlavaImageProcessor", "CLIPImageProcessor")."""
    return getattr(transformers, name + "Pil" if HAS_IMAGE_BACKENDS else name)


def auto_model_classes() -> list:
    """The Auto classes an image-text-to-text model registers with on this line."""
    names = ["AutoModelForImageTextToText"] + (["AutoModelForVision2Seq"] if HAS_VISION2SEQ else [])
    return [getattr(transformers, name) for name in names]


__all__ = ["HAS_IMAGE_BACKENDS", "HAS_VISION2SEQ", "PIL_IMAGE_PROCESSOR_KWARGS", "TRANSFORMERS_VERSION",
           "auto_model_classes", "pil_image_processor"]
