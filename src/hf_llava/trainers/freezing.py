"""Which parameters train in each stage, their optimizer groups, LoRA on the language model only, merging LoRA back.

Parts are told apart by parameter name (they keep transformers' llava names, also under PEFT's wrapper):
`vision_tower`, `multi_modal_projector` (with AnyRes's `image_newline`, a learned part of the visual tokens that
trains with the projector), everything else is the language model (`language_model`, `lm_head`).
"""

from typing import Iterable, Optional

import torch
from torch import nn

from .recipe import LORA

LM_LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# The name each part's optimizer groups carry (`group["name"]`, logged as `learning_rate/<name>`), in the
# groups' order: the language model first, since `Trainer` logs the first group's rate as `learning_rate`.
GROUP_NAMES = {"language": "language_model", "vision": "vision_tower", "projector": "projector"}


def part_of(name: str) -> str:
    """`"vision"`, `"projector"` (the projector and AnyRes's `image_newline`) or `"language"` for a parameter or
    module name."""
    if "vision_tower" in name:
        return "vision"
    if "multi_modal_projector" in name or name.split(".")[-1] == "image_newline":
        return "projector"
    return "language"


def set_trainable(model: nn.Module, parts: Iterable[str]) -> dict[str, int]:
    """`requires_grad` True exactly on the named parts; returns the trainable parameter count per part."""
    parts = set(parts)
    unknown = parts - {"vision", "projector", "language"}
    if unknown:
        raise ValueError(f"Unknown parts {sorted(unknown)}; expected vision, projector, language.")
    counts = {"vision": 0, "projector": 0, "language": 0}
    for name, param in model.named_parameters():
        part = part_of(name)
        param.requires_grad_(part in parts)
        if part in parts:
            counts[part] += param.numel()
    if not any(counts.values()):
        raise ValueError(f"No parameter to train: the model has no {sorted(parts)} parameters.")
    return counts


def stage_parts(stage: int, tune_vision_tower: bool = False, freeze_llm: bool = False) -> list[str]:
    """Stage 1: projector. Stage 2: projector + language model (`freeze_llm` drops it, `tune_vision_tower` adds
    the tower)."""
    if stage == 1:
        parts = ["projector"]
    elif stage == 2:
        parts = ["projector"] + ([] if freeze_llm else ["language"])
    else:
        raise ValueError(f"stage={stage}: expected 1 or 2.")
    return parts + (["vision"] if tune_vision_tower else [])


def lm_lora_config(
    r: int = LORA["r"],
    lora_alpha: int = LORA["lora_alpha"],
    lora_dropout: float = LORA["lora_dropout"],
    target_names: Iterable[str] = LM_LINEAR_NAMES,
    **kwargs,
):
    """A `peft.LoraConfig` for the language model only (the recipe's rank, alpha and dropout by default), the
    projector fully trained.

    The targets are a regex on `language_model`: a plain list of `q_proj`... would also hit the CLIP tower.
    """
    from peft import LoraConfig

    pattern = r".*language_model.*\.(" + "|".join(target_names) + ")"
    return LoraConfig(
        r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=pattern,
        modules_to_save=["multi_modal_projector"], task_type="CAUSAL_LM", **kwargs,
    )


def is_quantized(model: nn.Module) -> bool:
    """Whether `model` was loaded in 4 or 8 bits by bitsandbytes (`quantization_config`)."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def prepare_quantized(model: nn.Module, gradient_checkpointing: bool, checkpointing_kwargs: Optional[dict] = None):
    """QLoRA's preparation, PEFT's `prepare_model_for_kbit_training`: every parameter frozen, the float16 /
    bfloat16 ones outside the quantised layers upcast to float32, and with `gradient_checkpointing` the inputs'
    gradients enabled and checkpointing on."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                           gradient_checkpointing_kwargs=checkpointing_kwargs)


def trainable_in_full_precision(model: nn.Module) -> int:
    """Trainable parameters (LoRA adapters, the projector) back to float32; returns how many were cast.

    TRL casts a quantised model's trainable parameters to bfloat16 (the QLoRA paper's adapters). The projector's
    small updates would be rounded away in bfloat16 (8 bits of mantissa: an update below ~1/256 of the weight is
    lost), and a resumed run would train differently from the first: PEFT loads a checkpoint's adapter in
    float32 (its default). Kept in float32, as PEFT makes them; bf16 mixed precision still runs the matmuls in bf16.
    """
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
            cast += 1
    return cast


def ensure_projector_saved(peft_config) -> None:
    """Add the projector to `modules_to_save` (trained fully and saved with the adapter)."""
    modules = list(peft_config.modules_to_save or [])
    if "multi_modal_projector" not in modules:
        peft_config.modules_to_save = modules + ["multi_modal_projector"]


def check_lora_placement(model: nn.Module) -> None:
    """Raise if a LoRA module sits in the vision tower (a `target_modules` list that also matches CLIP)."""
    bad = [name for name, _ in model.named_modules() if "vision_tower" in name and name.endswith(".lora_A")]
    if bad:
        raise ValueError(
            f"The LoRA config put adapters in the vision tower ({len(bad)} modules, e.g. {bad[0]!r}). Target the "
            "language model only: `hf_llava.trainers.lm_lora_config()` or "
            "target_modules=r'.*language_model.*\\.(q_proj|v_proj)'."
        )


def split_param_groups(optimizer, model: nn.Module, projector_lr: Optional[float] = None,
                       vision_tower_lr: Optional[float] = None) -> bool:
    """Split `optimizer`'s parameter groups by part, name them (`GROUP_NAMES`), set the projector's and the vision
    tower's rates (None: the group's own).

    Each group is copied per part with its other settings (weight decay, an optimizer's own keys) kept,
    so whatever `Trainer.create_optimizer` built (decay groups, GaLore groups, 8-bit optimizers) stays as
    it was apart from the split. Call it on a fresh optimizer (no state yet). Returns False, changing
    nothing, when the groups do not hold the model's trainable parameters (a layer-wise wrapper).
    """
    part_by_id = {id(p): part_of(name) for name, p in model.named_parameters()}
    grouped = [p for group in optimizer.param_groups for p in group["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    if not grouped or any(id(p) not in part_by_id for p in grouped) or not trainable <= {id(p) for p in grouped}:
        return False
    rates = {"projector": projector_lr, "vision": vision_tower_lr}
    groups = []
    for group in optimizer.param_groups:
        for part, name in GROUP_NAMES.items():
            params = [p for p in group["params"] if part_by_id[id(p)] == part]
            if params:
                new = {**group, "params": params, "name": name}
                if rates.get(part) is not None:
                    new["lr"] = rates[part]
                    new.pop("initial_lr", None)  # a scheduler made later takes it from "lr"
                groups.append(new)
    order = list(GROUP_NAMES.values())
    optimizer.param_groups[:] = sorted(groups, key=lambda g: order.index(g["name"]))  # sort is stable
    return True


__all__ = [
    "GROUP_NAMES", "LM_LINEAR_NAMES", "check_lora_placement", "ensure_projector_saved", "is_quantized",
    "lm_lora_config", "part_of", "prepare_quantized", "trainable_in_full_precision", "set_trainable",
    "split_param_groups", "stage_parts",
]
