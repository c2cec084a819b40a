"""LLaVA's two training stages on TRL: configs with the recipe's defaults, trainers, freezing, LoRA, projector files."""

from .configs import LlavaStage1Config, LlavaStage2Config
from .freezing import check_lora_placement, lm_lora_config, merge_lora, set_trainable, stage_parts
from .projector import PROJECTOR_FILE, load_projector, load_stage1_output, save_projector
from .stage_trainers import LlavaStage1Trainer, LlavaStage2Trainer

__all__ = [
    "LlavaStage1Config",
    "LlavaStage1Trainer",
    "LlavaStage2Config",
    "LlavaStage2Trainer",
    "PROJECTOR_FILE",
    "check_lora_placement",
    "lm_lora_config",
    "load_projector",
    "load_stage1_output",
    "merge_lora",
    "save_projector",
    "set_trainable",
    "stage_parts",
]
