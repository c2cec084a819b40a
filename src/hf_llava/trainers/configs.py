"""`LlavaStage1Config` / `LlavaStage2Config`: TRL `SFTConfig`s with the LLaVA-1.5 recipe's defaults.

Stage 1 (feature alignment): template `plain`, projector only, lr 1e-3, warmup 3%, cosine, no weight decay.
Stage 2 (instruction tuning): template `vicuna_v1`, projector + LLM, lr 2e-5, same schedule.
TRL's dataset preparation is skipped (our collator tokenizes, masks and loads images) and the dataset's
columns are kept for the collator. The global batch sizes of the paper (256 / 128) are
`per_device_train_batch_size x gradient_accumulation_steps x num_processes`: set them for your hardware.
"""

from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from trl import SFTConfig


@dataclass
class _LlavaConfigMixin(SFTConfig):
    """Fields shared by both stages (on top of `SFTConfig`)."""

    warmup_ratio: float = field(default=0.03, metadata={"help": "Warmup fraction of the steps (recipe: 3%)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Recipe: cosine."})
    weight_decay: float = field(default=0.0, metadata={"help": "Recipe: no weight decay."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Recipe: 1 epoch."})
    max_length: Optional[int] = field(default=2048, metadata={"help": "Token budget per sample (recipe: 2048)."})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute activations to save memory; use gradient_checkpointing_kwargs={'use_reentrant': False}."},
    )
    bf16: Optional[bool] = field(default=None, metadata={"help": "bf16 mixed precision; default: on when CUDA has bf16."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: the collator reads the columns."})
    dataset_kwargs: Optional[Union[dict[str, Any], str]] = field(
        default_factory=lambda: {"skip_prepare_dataset": True},
        metadata={"help": "TRL's preparation is skipped; LlavaDataCollator tokenizes and builds the labels."},
    )
    report_to: Union[None, str, list[str]] = field(default="none", metadata={"help": "Loggers (wandb, tensorboard...)."})
    template: str = field(default="vicuna_v1", metadata={"help": "A CHAT_TEMPLATES name."})
    image_position: str = field(default="random", metadata={"help": "random (paper), before, keep."})
    truncation: str = field(default="text_only", metadata={"help": "text_only, or 'raise' to refuse cutting images."})
    bad_image_policy: str = field(default="error", metadata={"help": "error, or skip (counted, summary at the end)."})
    projector_lr: Optional[float] = field(default=None, metadata={"help": "Learning rate of the projector."})
    save_at_end: bool = field(default=True, metadata={"help": "save_model() (model, processor, projector) after train()."})

    def __post_init__(self):
        if self.bf16 is None:  # TRL turns bf16 on by default; on CPU that is slow and changes the numerics
            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()) and not self.fp16
        if isinstance(self.truncation, str) and self.truncation.lower() in ("raise", "true"):
            self.truncation = True
        super().__post_init__()


@dataclass
class LlavaStage1Config(_LlavaConfigMixin):
    """Stage 1 (feature alignment): only the projector trains; saves `mm_projector.safetensors`."""

    learning_rate: float = field(default=1e-3, metadata={"help": "Recipe: 1e-3."})
    template: str = field(default="plain", metadata={"help": "Recipe: plain (image, caption, newline)."})
    cache_image_features: bool = field(
        default=False,
        metadata={"help": "Compute the frozen tower's features once per image and reuse them on later epochs."},
    )


@dataclass
class LlavaStage2Config(_LlavaConfigMixin):
    """Stage 2 (visual instruction tuning): projector + LLM train, the vision tower stays frozen."""

    learning_rate: float = field(default=2e-5, metadata={"help": "Recipe: 2e-5 (LoRA: 2e-4 with projector_lr 2e-5)."})
    template: str = field(default="vicuna_v1", metadata={"help": "Recipe: vicuna_v1."})
    tune_vision_tower: bool = field(default=False, metadata={"help": "Also train the vision tower."})
    freeze_llm: bool = field(default=False, metadata={"help": "Keep the LLM frozen (projector only, stage-2 data)."})


__all__ = ["LlavaStage1Config", "LlavaStage2Config"]
