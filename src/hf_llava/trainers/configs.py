"""`LlavaStage1Config` / `LlavaStage2Config`: TRL `SFTConfig`s with the LLaVA-1.5 recipe's defaults (`recipe.py`).

Stage 1 (feature alignment): template `plain`, projector only, images resized and centre-cropped
(`image_aspect_ratio="square"`). Stage 2 (instruction tuning): template `vicuna_v1`, projector + LLM, images
padded to a square with the mean colour (`image_aspect_ratio="pad"`; `"anyres"`: LLaVA-NeXT's tiles, with
`vision_tower_lr` for NeXT's tower at its own rate). Both: the recipe's schedule (warmup,
cosine, no weight decay, one epoch) and `<image>\\n` before the first question (`image_position="before"`), as the
1.5 training code does. TRL's dataset preparation is skipped (our collator tokenizes, masks and loads images)
and the dataset's columns are kept for the collator.
"""

from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from trl import SFTConfig

from ..data.llava_json import BAD_IMAGE_POLICIES, IMAGE_ASPECT_RATIOS, IMAGE_POSITIONS
from .recipe import IMAGE_POSITION, LORA, NEXT, RUN, SCHEDULE, STAGE1, STAGE2

# Optimizers that update inside backward or per layer: their parameter groups are not where the rates live.
_NO_PARAM_GROUPS = ("lomo", "layerwise")
# Non-reentrant checkpointing: what torch recommends, and reentrant fails where DDP must find unused parameters
# (a text-only batch leaves the vision tower without gradients).
_CHECKPOINTING_KWARGS = {"use_reentrant": False}


def optim_has_param_groups(optim) -> bool:
    """Whether `TrainingArguments.optim` names an optimizer whose parameter groups carry the learning rates."""
    name = str(getattr(optim, "value", optim))
    return not any(kind in name for kind in _NO_PARAM_GROUPS)


def _accelerator_available() -> bool:
    """What torch's DataLoader checks before pinning memory (it warns and does nothing without one)."""
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def checkpointing_of(args) -> tuple[bool, Optional[dict]]:
    """Whether training arguments turn activation (gradient) checkpointing on, and its kwargs, read under the
    installed transformers' name (`_LlavaStageConfig._resolve_checkpointing`)."""
    name = "activation_checkpointing" if hasattr(args, "activation_checkpointing") else "gradient_checkpointing"
    return bool(getattr(args, name)), getattr(args, f"{name}_kwargs")


@dataclass
class _LlavaStageConfig(SFTConfig):
    """The base of both stages' configs: the fields they share, on top of `SFTConfig`.

    Each stage declares `learning_rate`, `per_device_train_batch_size`, `template` and `image_aspect_ratio`.
    """

    num_train_epochs: float = field(default=SCHEDULE["num_train_epochs"], metadata={"help": "Training epochs."})
    warmup_ratio: float = field(default=SCHEDULE["warmup_ratio"], metadata={"help": "Warmup fraction of the steps."})
    lr_scheduler_type: str = field(default=SCHEDULE["lr_scheduler_type"], metadata={"help": "Learning-rate schedule."})
    weight_decay: float = field(default=SCHEDULE["weight_decay"], metadata={"help": "AdamW weight decay."})
    max_length: Optional[int] = field(default=SCHEDULE["max_length"], metadata={"help": "Token budget per sample."})
    gradient_accumulation_steps: int = field(default=SCHEDULE["gradient_accumulation_steps"],
                                             metadata={"help": "Batches per optimizer step."})
    logging_steps: float = field(default=RUN["logging_steps"], metadata={"help": "Log every this many steps."})
    save_steps: float = field(default=RUN["save_steps"], metadata={"help": "Checkpoint every this many steps."})
    seed: int = field(default=RUN["seed"], metadata={"help": "Random seed (also of image_position='random')."})
    max_steps: int = field(default=RUN["max_steps"], metadata={"help": "Stop after this many steps (-1: epochs)."})
    gradient_checkpointing: Optional[bool] = field(
        default=None,
        metadata={"help": "Recompute activations to save memory (off by default; non-reentrant unless "
                          "gradient_checkpointing_kwargs say otherwise). Taken on transformers 4.57 and 5.x alike."},
    )
    bf16: Optional[bool] = field(default=None,
                                 metadata={"help": "bf16 mixed precision; default: on when CUDA has bf16."})
    dataloader_pin_memory: Optional[bool] = field(
        default=None,
        metadata={"help": "Pin batches in page-locked memory; default: on when an accelerator is present."},
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: the collator reads the columns."})
    dataset_kwargs: Optional[Union[dict[str, Any], str]] = field(
        default_factory=lambda: {"skip_prepare_dataset": True},
        metadata={"help": "TRL's preparation is skipped; LlavaDataCollator tokenizes and builds the labels."},
    )
    report_to: Union[None, str, list[str]] = field(default="none",
                                                   metadata={"help": "Loggers (wandb, tensorboard...)."})
    image_position: str = field(
        default=IMAGE_POSITION,
        metadata={"help": "Where the image goes in the first turn: before (LLaVA-1.5's code: '<image>\\n' first, "
                          "whatever the JSON says), random (the paper: before or after the question, seeded per "
                          "sample), keep (where the JSON puts '<image>')."},
    )
    truncation: str = field(default="text_only", metadata={"help": "text_only, or 'raise' to refuse cutting images."})
    bad_image_policy: str = field(default=RUN["bad_image_policy"],
                                  metadata={"help": "error, or skip (counted, summary at the end)."})
    projector_lr: Optional[float] = field(
        default=None,
        metadata={"help": "Learning rate of the projector (its own parameter groups); default: learning_rate."},
    )
    save_at_end: bool = field(default=True,
                              metadata={"help": "save_model() (model, processor, projector) after train()."})

    def __post_init__(self):
        for name, allowed in (("image_position", IMAGE_POSITIONS), ("image_aspect_ratio", IMAGE_ASPECT_RATIOS),
                              ("bad_image_policy", BAD_IMAGE_POLICIES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of {allowed}.")
        for rate in ("projector_lr", "vision_tower_lr"):
            if getattr(self, rate, None) is not None and not optim_has_param_groups(self.optim):
                optim = str(getattr(self.optim, "value", self.optim))
                raise ValueError(f"{rate} with optim={optim!r}: that optimizer takes no per-group learning rates; "
                                 f"leave {rate} unset or choose another optimizer.")
        if self.bf16 is None:  # TRL turns bf16 on by default; on CPU that is slow and changes the numerics
            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()) and not self.fp16
        if self.dataloader_pin_memory is None:  # pinning without an accelerator only makes torch warn
            self.dataloader_pin_memory = _accelerator_available() and not self.use_cpu
        if isinstance(self.truncation, str) and self.truncation.lower() in ("raise", "true"):
            self.truncation = True
        self._resolve_checkpointing()
        super().__post_init__()

    def _resolve_checkpointing(self) -> None:
        """Hand `gradient_checkpointing(_kwargs)` on under the installed transformers' name, non-reentrant by default.

        transformers 5.x renamed them `activation_checkpointing(_kwargs)`: the old names warn (FutureWarning) when
        not None, and TRL's default of True for the old one made every run warn. Ours takes the old names on both
        lines (None: off) and moves them to the new ones where those exist, so nothing warns.
        """
        renamed = hasattr(self, "activation_checkpointing")  # transformers >= 5
        if renamed:
            for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                             ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
                if getattr(self, new) is None:
                    setattr(self, new, getattr(self, old))
                setattr(self, old, None)  # transformers mirrors the new name into it afterwards
        name = "activation_checkpointing" if renamed else "gradient_checkpointing"
        if getattr(self, name) is None:
            setattr(self, name, False)
        if getattr(self, name) and getattr(self, f"{name}_kwargs") is None:
            setattr(self, f"{name}_kwargs", dict(_CHECKPOINTING_KWARGS))


@dataclass
class LlavaStage1Config(_LlavaStageConfig):
    """Stage 1 (feature alignment): only the projector (with AnyRes's `image_newline`) trains; saves
    `mm_projector.safetensors`."""

    learning_rate: float = field(default=STAGE1["learning_rate"], metadata={"help": "Learning rate (the projector's)."})
    per_device_train_batch_size: int = field(default=STAGE1["per_device_train_batch_size"],
                                             metadata={"help": "Batch size per device."})
    template: str = field(default=STAGE1["template"],
                          metadata={"help": "A CHAT_TEMPLATES name; plain: image, caption, newline."})
    image_aspect_ratio: str = field(
        default=STAGE1["image_aspect_ratio"],
        metadata={"help": "square: resize + centre crop, no pad (LLaVA-1.5 stage 1); pad: pad to a square with "
                          "the mean colour first (stage 2); anyres: LLaVA-NeXT's tiles (an AnyRes model)."},
    )


@dataclass
class LlavaStage2Config(_LlavaStageConfig):
    """Stage 2 (visual instruction tuning): projector + LLM train, the vision tower stays frozen (unless
    `tune_vision_tower` or `vision_tower_lr`)."""

    learning_rate: float = field(
        default=STAGE2["learning_rate"],
        metadata={"help": f"Learning rate (LoRA: {LORA['learning_rate']} with projector_lr {LORA['projector_lr']})."},
    )
    per_device_train_batch_size: int = field(default=STAGE2["per_device_train_batch_size"],
                                             metadata={"help": "Batch size per device."})
    template: str = field(default=STAGE2["template"], metadata={"help": "A CHAT_TEMPLATES name."})
    image_aspect_ratio: str = field(
        default=STAGE2["image_aspect_ratio"],
        metadata={"help": "pad: pad to a square with the mean colour, then the image processor (LLaVA-1.5 stage "
                          "2; any image processor); square: its resize + centre crop only (stage 1); anyres: "
                          "LLaVA-NeXT's tiles (an AnyRes model)."},
    )
    tune_vision_tower: bool = field(default=False, metadata={"help": "Also train the vision tower."})
    vision_tower_lr: Optional[float] = field(
        default=None,
        metadata={"help": "Learning rate of the vision tower (its own parameter groups); setting it also trains the "
                          f"tower (tune_vision_tower). LLaVA-NeXT's stage 2: {NEXT['vision_tower_lr']} beside "
                          f"learning_rate {NEXT['learning_rate']}."},
    )
    freeze_llm: bool = field(default=False, metadata={"help": "Keep the LLM frozen (projector only, stage-2 data)."})

    def __post_init__(self):
        if self.vision_tower_lr is not None:  # a rate for the tower is a request to train it
            self.tune_vision_tower = True
        super().__post_init__()


__all__ = ["LlavaStage1Config", "LlavaStage2Config", "checkpointing_of"]
