"""The LLaVA-1.5 recipe's per-stage values (its `scripts/v1_5` training scripts), in one place.

The configs take their defaults from here and the CLI shows them in `--help`; this module imports nothing
heavy, so `hf-llava train --help` answers at once.
"""

STAGE1 = {"learning_rate": 1e-3, "template": "plain", "image_aspect_ratio": "square"}
STAGE2 = {"learning_rate": 2e-5, "template": "vicuna_v1", "image_aspect_ratio": "pad"}
# LoRA variant of stage 2: LoRA on the language model, the projector fully trained at its own rate.
LORA = {"r": 128, "lora_alpha": 256, "learning_rate": 2e-4, "projector_lr": 2e-5}
IMAGE_POSITION = "before"  # the 1.5 code puts "<image>\n" first in the first turn, whatever the JSON says

__all__ = ["IMAGE_POSITION", "LORA", "STAGE1", "STAGE2"]
