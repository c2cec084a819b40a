"""The LLaVA-1.5 recipe (its `scripts/v1_5/pretrain.sh` and `finetune.sh`), LLaVA-NeXT's stage-2 rates and
hf-llava's run defaults: every number of the two stages' defaults, once.

The stage configs (`configs.py`) take their defaults from here and the `train` command shows the same values
in `--help`; this module imports nothing, so `hf-llava train --help` answers at once.
"""

# Both stages: one epoch (the paper's v1 stage 2: 3), 3% warmup then cosine, no weight decay, 2048 tokens.
SCHEDULE = {
    "num_train_epochs": 1.0,
    "warmup_ratio": 0.03,
    "lr_scheduler_type": "cosine",
    "weight_decay": 0.0,
    "max_length": 2048,
    "gradient_accumulation_steps": 1,
}
# Per-device batches of the scripts, on 8 GPUs: global batches of 256 (stage 1) and 128 (stage 2). The global
# batch is per_device_train_batch_size x gradient_accumulation_steps x processes: set them for your hardware.
STAGE1 = {"learning_rate": 1e-3, "per_device_train_batch_size": 32, "template": "plain",
          "image_aspect_ratio": "square"}
STAGE2 = {"learning_rate": 2e-5, "per_device_train_batch_size": 16, "template": "vicuna_v1",
          "image_aspect_ratio": "pad"}
# LoRA variant of stage 2: LoRA on the language model, the projector fully trained at its own rate.
LORA = {"r": 128, "lora_alpha": 256, "lora_dropout": 0.05, "learning_rate": 2e-4, "projector_lr": 2e-5}
# QLoRA (`hf-llava train stage2 --lora --load-in 4bit`), as the original's `scripts/finetune_qlora.sh` (a v1 script;
# v1.5 has no QLoRA one): LoRA on the language model loaded in 4-bit NF4 with double quantisation (the defaults of
# `hf_llava._loading.bitsandbytes_config`), the rank and alpha of its training code's defaults (the script sets
# neither), one rate for the adapters and the projector (projector_lr None: learning_rate), dropout as LORA's,
# gradient checkpointing on.
QLORA = {"r": 64, "lora_alpha": 16, "learning_rate": 2e-5, "projector_lr": None, "gradient_checkpointing": True}
# LLaVA-NeXT (1.6; its release had no training code, these are the rates of the LLaVA-NeXT repository's stage-2
# scripts): stage 1 as 1.5; stage 2 on AnyRes tiles, the language model (and projector) at 1e-5, the vision tower
# trained too at its own 2e-6.
NEXT = {"learning_rate": 1e-5, "vision_tower_lr": 2e-6, "image_aspect_ratio": "anyres"}
IMAGE_POSITION = "before"  # the 1.5 code puts "<image>\n" first in the first turn, whatever the JSON says

# hf-llava's own, where the scripts are tied to their cluster (a checkpoint every 24000 / 50000 steps, a log
# line every step) or leave transformers' value (seed, max_steps -1: the epochs decide).
RUN = {"logging_steps": 10, "save_steps": 500, "seed": 42, "max_steps": -1, "bad_image_policy": "error"}


def stage_defaults(stage: int) -> dict:
    """Every default the stage's config sets from this module (`LlavaStage{stage}Config`'s field names)."""
    if stage not in (1, 2):
        raise ValueError(f"stage={stage!r}: expected 1 or 2.")
    return {**SCHEDULE, **RUN, "image_position": IMAGE_POSITION, **(STAGE1 if stage == 1 else STAGE2)}


__all__ = ["IMAGE_POSITION", "LORA", "NEXT", "QLORA", "RUN", "SCHEDULE", "STAGE1", "STAGE2", "stage_defaults"]
