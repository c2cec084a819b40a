"""LLaVA's two training stages on TRL: configs with the recipe's defaults, trainers, freezing, LoRA, projector files,
the memory plan of a run.

The names are imported on first use: importing the package (or `hf_llava.trainers.cli`) imports neither
torch nor TRL.
"""

import importlib.util

from .._lazy import lazy_names

# The modules of the `[train]` extra (pyproject.toml), as imported.
TRAIN_MODULES = ("trl", "peft", "datasets", "accelerate")


def require_training(feature: str) -> None:
    """Raise `MissingExtraError` (`pip install 'hf-llava[train]'`) when a module of the `[train]` extra is missing;
    `feature` names what needs it ("hf-llava train"). Looks the modules up without importing them."""
    from .._extras import require

    for module in TRAIN_MODULES:
        if importlib.util.find_spec(module) is None:
            require(module, "train", feature)  # raises, naming the extra


__getattr__, __dir__ = lazy_names(__name__, {
    "LlavaStage1Config": ".configs",
    "LlavaStage1Trainer": ".stage_trainers",
    "LlavaStage2Config": ".configs",
    "LlavaStage2Trainer": ".stage_trainers",
    "MemoryPlan": ".memory",
    "PROJECTOR_FILE": ".projector",
    "check_lora_placement": ".freezing",
    "check_training_output": ".outputs",
    "lm_lora_config": ".freezing",
    "load_model_with_projector": ".projector",
    "load_projector": ".projector",
    "merge_lora": ".._loading",
    "plan_training": ".memory",
    "save_projector": ".projector",
    "set_trainable": ".freezing",
    "split_param_groups": ".freezing",
    "stage_parts": ".freezing",
    "training_output": ".outputs",
})

__all__ = [
    "LlavaStage1Config",
    "LlavaStage1Trainer",
    "LlavaStage2Config",
    "LlavaStage2Trainer",
    "MemoryPlan",
    "PROJECTOR_FILE",
    "TRAIN_MODULES",
    "check_lora_placement",
    "check_training_output",
    "lm_lora_config",
    "load_model_with_projector",
    "load_projector",
    "merge_lora",
    "plan_training",
    "require_training",
    "save_projector",
    "set_trainable",
    "split_param_groups",
    "stage_parts",
    "training_output",
]
