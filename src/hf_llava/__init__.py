"""hf-llava: LLaVA (Visual Instruction Tuning) on the Hugging Face stack.

Importing this package registers `LlavaConfig` (`model_type="hf_llava"`), `LlavaProcessor` and
`LlavaForConditionalGeneration` with transformers' `AutoConfig`, `AutoProcessor`,
`AutoModelForVision2Seq` and `AutoModelForImageTextToText`, and marks them for `auto_map`, so saved
folders also load with `trust_remote_code=True` where hf-llava is not installed.

The public names are imported on first use, and so is transformers: `import transformers` takes
seconds, and `hf-llava --help` must not. The registration happens as soon as transformers is
imported (at once when it already is), so `import hf_llava` then any Auto class works as before.
"""

import importlib.abc
import importlib.util
import sys
import warnings

from ._lazy import lazy_names

__version__ = "0.1.0"

__getattr__, __dir__ = lazy_names(__name__, {
    "CHAT_TEMPLATES": ".processing",
    "LlavaConfig": ".modeling",
    "LlavaForConditionalGeneration": ".modeling",
    "LlavaModel": ".modeling",
    "LlavaProcessor": ".processing",
    "add_llava_tokens": ".processing",
    "from_vision_and_text": ".builder",
    "push_to_hub": ".hub",
    "LocalTeacher": ".teachers",
    "OpenAITeacher": ".teachers",
    "write_model_card": ".hub",
})


_state = {"transformers_ready": "transformers" in sys.modules, "registered": False}


def _register() -> None:
    if _state["registered"]:
        return
    from transformers import AutoConfig, AutoModel, AutoProcessor

    from ._compat import auto_model_classes
    from .modeling import LlavaConfig, LlavaForConditionalGeneration, LlavaModel
    from .processing import LlavaProcessor

    AutoConfig.register(LlavaConfig.model_type, LlavaConfig, exist_ok=True)
    AutoModel.register(LlavaConfig, LlavaModel, exist_ok=True)
    for auto_class in auto_model_classes():  # AutoModelForImageTextToText (+ AutoModelForVision2Seq on 4.57)
        auto_class.register(LlavaConfig, LlavaForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(LlavaConfig, LlavaProcessor, exist_ok=True)
    # `auto_map` + a copy of the module files in every saved folder (trust_remote_code loading).
    LlavaConfig.register_for_auto_class()
    LlavaForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
    LlavaProcessor.register_for_auto_class("AutoProcessor")
    _state["registered"] = True


def _register_pending() -> None:
    """Register once transformers is loaded; a no-op while one of our modules is still half-imported.

    Importing `hf_llava.modeling` or `hf_llava.processing` is what imports transformers in the first place, and
    the registration needs both whole: it is tried again when each of them finishes importing (`_AfterImport`).
    """
    if not _state["transformers_ready"] or _state["registered"]:
        return
    try:
        _register()
    except ImportError as error:
        if "partially initialized" not in str(error):
            raise


# The modules after whose import the registration is tried: transformers, and our two that it needs whole.
_WATCHED = {"transformers", f"{__name__}.modeling", f"{__name__}.processing"}


class _AfterImport(importlib.abc.MetaPathFinder):
    """Tries `_register_pending` right after a watched module finishes importing; leaves `sys.meta_path` once
    the Auto classes are registered. The packages below this one never import it back."""

    def find_spec(self, name, path=None, target=None):
        if name not in _WATCHED or _state["registered"]:
            return None
        sys.meta_path.remove(self)  # find the real spec without asking ourselves again
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            if name == "transformers":
                _state["transformers_ready"] = True
            try:
                _register_pending()
            except Exception as error:  # never break `import transformers` for a user who does not need us
                warnings.warn(f"hf-llava could not register its Auto classes: {error!r}", stacklevel=2)
            if _state["registered"] and self in sys.meta_path:
                sys.meta_path.remove(self)

        spec.loader.exec_module = exec_then_register
        return spec


_state["transformers_ready"] = "transformers" in sys.modules
_register_pending()
if not _state["registered"]:
    sys.meta_path.insert(0, _AfterImport())

__all__ = [
    "CHAT_TEMPLATES",
    "LocalTeacher",
    "OpenAITeacher",
    "LlavaConfig",
    "LlavaForConditionalGeneration",
    "LlavaModel",
    "LlavaProcessor",
    "__version__",
    "add_llava_tokens",
    "from_vision_and_text",
    "push_to_hub",
    "write_model_card",
]
