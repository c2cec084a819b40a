"""`LlavaStage1Trainer` and `LlavaStage2Trainer`: TRL `SFTTrainer`s for LLaVA's two training stages.

Each overrides the smallest hooks: freezing happens before `SFTTrainer.__init__` (the optimizer only takes
trainable parameters), `create_optimizer` splits `Trainer`'s groups by part (projector and vision tower learning
rates),
`log` adds each group's learning rate under its name, `_save` writes the projector alone beside the full
(resumable) checkpoint in stage 1, `compute_loss` collects the batches' data reports (skipped images),
summarised across processes at the end of `train`. Logging, checkpoints, resume, accelerate / DeepSpeed /
FSDP stay `Trainer`'s. A LoRA adapter records its base model as an absolute path, so it loads from anywhere.
"""

import logging
import os
from typing import Optional

from accelerate.utils import gather_object
from trl import SFTTrainer

from ..data.collator import LlavaDataCollator, data_summary
from .configs import LlavaStage1Config, LlavaStage2Config, checkpointing_of, optim_has_param_groups
from .freezing import (check_lora_placement, ensure_projector_saved, is_quantized, prepare_quantized,
                       trainable_in_full_precision, set_trainable, split_param_groups, stage_parts)
from .projector import PROJECTOR_FILE, save_projector

logger = logging.getLogger(__name__)


class _LlavaTrainer(SFTTrainer):
    stage: int = 0
    config_class = LlavaStage2Config

    def __init__(self, model, args=None, train_dataset=None, eval_dataset=None, processing_class=None,
                 data_collator=None, peft_config=None, **kwargs):
        if isinstance(model, str) or model is None:
            raise TypeError(
                "Pass a model instance (e.g. LlavaForConditionalGeneration.from_pretrained(path)): TRL resolves model "
                "names through transformers by class name, which does not know hf-llava's classes."
            )
        if processing_class is None:
            raise ValueError("Pass processing_class=LlavaProcessor (AutoProcessor.from_pretrained(path)).")
        args = args if args is not None else self.config_class(output_dir=f"llava-stage{self.stage}")
        if data_collator is None:  # first: it refuses a template the tokenizer cannot end, before the model changes
            data_collator = LlavaDataCollator(
                processing_class, template=args.template, max_length=args.max_length, truncation=args.truncation,
                image_position=args.image_position, seed=args.seed, bad_image_policy=args.bad_image_policy,
                image_aspect_ratio=args.image_aspect_ratio, report_in_batch=True,
            )
        tune_tower = getattr(args, "tune_vision_tower", False)
        quantized = is_quantized(model)
        if quantized and peft_config is None:
            raise ValueError("The model is loaded in 4 / 8 bits (quantization_config), whose weights cannot train: "
                             "train LoRA adapters on it (QLoRA) with peft_config=lm_lora_config() (lora=True).")
        if peft_config is not None:
            if tune_tower:
                raise ValueError("tune_vision_tower (or vision_tower_lr) with LoRA is not supported: LoRA targets the "
                                 "language model only.")
            ensure_projector_saved(peft_config)
            if quantized:  # QLoRA: PEFT's preparation before the adapters are added
                prepare_quantized(model, *checkpointing_of(args))
            if hasattr(getattr(model, "model", None), "image_newline"):
                logger.warning("LoRA: the AnyRes image_newline keeps its current values (PEFT trains and saves whole "
                               "modules such as the projector, not single parameters); it trains in stage 1 and in "
                               "a full stage 2.")
        else:
            counts = set_trainable(model, stage_parts(self.stage, tune_tower, getattr(args, "freeze_llm", False)))
            logger.info("Stage %d trainable parameters: %s", self.stage, counts)
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, data_collator=data_collator, peft_config=peft_config,
                         **kwargs)
        if peft_config is not None:
            check_lora_placement(self.model)
            self._record_adapter_base()
            if quantized:
                trainable_in_full_precision(self.model)
        self._data_skipped: list = []  # from the batches' `data_report`: counted wherever the collator ran
        self._data_truncated = 0
        self._group_rates: dict[str, float] = {}  # each named optimizer group's rate at the last step
        self._optimizer_given = self.optimizer is not None
        self._groups_split = False

    def compute_loss(self, model, inputs, *args, **kwargs):
        report = inputs.pop("data_report", None)
        if report:
            self._data_skipped.extend(report["skipped"])
            self._data_truncated += report["fully_truncated"]
        return super().compute_loss(model, inputs, *args, **kwargs)

    def _data_summary(self, everywhere: bool) -> str:
        skipped, truncated = self._data_skipped, self._data_truncated
        if everywhere and self.accelerator.num_processes > 1:  # every rank's batches, on every rank
            parts = gather_object([(skipped, truncated)])
            skipped, truncated = [s for part in parts for s in part[0]], sum(part[1] for part in parts)
        return data_summary(skipped, truncated)

    def _record_adapter_base(self) -> None:
        """Make the adapter's `base_model_name_or_path` absolute when it names a local folder.

        PEFT records the path the model was loaded from as typed ("out1"): relative to the directory
        the run started in, and read as a Hub id from anywhere else.
        """
        for config in getattr(self.model, "peft_config", {}).values():
            base = config.base_model_name_or_path
            if base and not os.path.isabs(base) and os.path.isdir(base):
                config.base_model_name_or_path = os.path.abspath(base)
            if base:
                logger.info("adapter base model: %s", config.base_model_name_or_path)

    def create_optimizer(self):
        """`Trainer.create_optimizer`, then its groups split by part and named (`learning_rate/<name>` in the
        logs), the projector's at `args.projector_lr` and the vision tower's at `args.vision_tower_lr` when set."""
        optimizer = super().create_optimizer()
        if self._groups_split:  # called again (another `train()`): already done
            return optimizer
        self._groups_split = True
        rates = {"projector_lr": self.args.projector_lr, "vision_tower_lr": getattr(self.args, "vision_tower_lr", None)}
        given = {name: rate for name, rate in rates.items() if rate is not None}
        if self._optimizer_given:  # `optimizers=(optimizer, ...)`: the caller's groups are left as they are
            if given:
                logger.warning("%s ignored: the optimizer was given to the trainer ready-made.", " and ".join(given))
            return optimizer
        if not optim_has_param_groups(self.args.optim):  # LOMO, layer-wise: their own rates (the config refuses
            return optimizer                              # projector_lr / vision_tower_lr with them)
        if not split_param_groups(optimizer, self.model, **rates) and given:
            name, rate = next(iter(given.items()))
            raise ValueError(f"{name}={rate}: the optimizer's parameter groups do not hold the model's parameters, so "
                             f"the {'projector' if name == 'projector_lr' else 'vision tower'} cannot get its own "
                             "rate.")
        return optimizer

    def _get_learning_rate(self):
        """`Trainer`'s rate for its `learning_rate` log (the first group's); each named group's rate is
        taken at the same moment (after the optimizer step, before the scheduler's) for `log`."""
        self._group_rates = {}
        for group in self.optimizer.param_groups if self.optimizer is not None else []:
            if "name" in group:
                rate = group["lr"]
                self._group_rates.setdefault(group["name"], rate.item() if hasattr(rate, "item") else rate)
        return super()._get_learning_rate()

    def log(self, logs: dict, *args, **kwargs) -> None:
        """`Trainer.log`, with each named parameter group's rate as `learning_rate/<name>`."""
        if "learning_rate" in logs:
            logs.update({f"learning_rate/{name}": rate for name, rate in self._group_rates.items()})
        super().log(logs, *args, **kwargs)

    def train(self, *args, **kwargs):
        """`Trainer.train`, then a summary of skipped samples and (with `save_at_end`) `save_model()`."""
        try:
            output = super().train(*args, **kwargs)
        except BaseException:
            summary = self._data_summary(everywhere=False)  # another rank may be gone: no collective call
            if summary:
                logger.warning("Stage %d data (this process, before the error): %s.", self.stage, summary)
            raise
        summary = self._data_summary(everywhere=True)
        if summary and self.accelerator.is_main_process:
            logger.warning("Stage %d data: %s.", self.stage, summary)
        if self.args.save_at_end:
            self.save_model()
        return output


class LlavaStage1Trainer(_LlavaTrainer):
    """Stage 1 (feature alignment): trains the projector only (with AnyRes's `image_newline`); `save_model` also
    writes `mm_projector.safetensors`."""

    stage = 1
    config_class = LlavaStage1Config

    def _save(self, output_dir: Optional[str] = None, state_dict=None):
        super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if state_dict is None:
            state_dict = self.accelerator.unwrap_model(self.model).state_dict()
        save_projector(state_dict, os.path.join(output_dir, PROJECTOR_FILE))


class LlavaStage2Trainer(_LlavaTrainer):
    """Stage 2 (instruction tuning): projector + LLM (or LoRA on the LLM with `peft_config`), the tower frozen
    unless `tune_vision_tower` / `vision_tower_lr` (LLaVA-NeXT)."""

    stage = 2
    config_class = LlavaStage2Config


__all__ = ["LlavaStage1Trainer", "LlavaStage2Trainer"]
