"""`LlavaStage1Trainer` and `LlavaStage2Trainer`: TRL `SFTTrainer`s for LLaVA's two training stages.

Each overrides the smallest hooks: freezing happens before `SFTTrainer.__init__` (the optimizer only takes
trainable parameters), `create_optimizer` adds a projector learning rate, `_save` writes the projector alone
beside the full (resumable) checkpoint in stage 1, `compute_loss` feeds the optional stage-1 feature cache
and collects the batches' data reports (skipped images), summarised across processes at the end of `train`.
Logging, checkpoints, resume, accelerate / DeepSpeed / FSDP stay `Trainer`'s.
"""

import logging
import os
from types import SimpleNamespace
from typing import Optional

import torch
from accelerate.utils import gather_object
from trl import SFTTrainer

from ..data import LlavaDataCollator
from ..data.collator import data_summary
from .configs import LlavaStage1Config, LlavaStage2Config
from .freezing import check_lora_placement, ensure_projector_saved, part_of, set_trainable, stage_parts
from .projector import save_projector

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
        tune_tower = getattr(args, "tune_vision_tower", False)
        if peft_config is not None:
            if tune_tower:
                raise ValueError("tune_vision_tower with LoRA is not supported: LoRA targets the language model only.")
            ensure_projector_saved(peft_config)
        else:
            counts = set_trainable(model, stage_parts(self.stage, tune_tower, getattr(args, "freeze_llm", False)))
            logger.info("Stage %d trainable parameters: %s", self.stage, counts)
        if data_collator is None:
            data_collator = LlavaDataCollator(
                processing_class, template=args.template, max_length=args.max_length, truncation=args.truncation,
                image_position=args.image_position, seed=args.seed, bad_image_policy=args.bad_image_policy,
                return_image_keys=getattr(args, "cache_image_features", False), report_in_batch=True,
            )
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, data_collator=data_collator, peft_config=peft_config,
                         **kwargs)
        if peft_config is not None:
            check_lora_placement(self.model)
        self._data_skipped: list = []  # from the batches' `data_report`: counted wherever the collator ran
        self._data_truncated = 0

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

    def create_optimizer(self):
        """`Trainer`'s optimizer, with the projector in its own groups at `args.projector_lr` when set."""
        if self.args.projector_lr is None or self.optimizer is not None:
            return super().create_optimizer()
        decay = set(self.get_decay_parameter_names(self.model))
        groups: dict[tuple, list] = {}
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                groups.setdefault((part_of(name) == "projector", name in decay), []).append(param)
        param_groups = [
            {"params": params, "weight_decay": self.args.weight_decay if is_decay else 0.0,
             **({"lr": self.args.projector_lr} if is_projector else {})}
            for (is_projector, is_decay), params in groups.items()
        ]
        if self.optimizer_cls_and_kwargs is not None:  # `Trainer(optimizer_cls_and_kwargs=...)` wins, as in Trainer
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
        else:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

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
    """Stage 1 (feature alignment): trains the projector only; `save_model` also writes `mm_projector.safetensors`.

    With `args.cache_image_features`, the frozen tower's features are computed once per image (keyed by the
    image path) and kept in CPU memory for later epochs.
    """

    stage = 1
    config_class = LlavaStage1Config

    def __init__(self, model, args: Optional[LlavaStage1Config] = None, **kwargs):
        super().__init__(model, args, **kwargs)
        self.feature_cache = _TowerFeatureCache(self.accelerator.unwrap_model(self.model))
        self._cache_keys = None

    def compute_loss(self, model, inputs, *args, **kwargs):
        keys = inputs.pop("image_keys", None)
        if not self.args.cache_image_features or not model.training:
            return super().compute_loss(model, inputs, *args, **kwargs)
        with self.feature_cache.using(keys):
            return super().compute_loss(model, inputs, *args, **kwargs)

    def _save(self, output_dir: Optional[str] = None, state_dict=None):
        super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if state_dict is None:
            state_dict = self.accelerator.unwrap_model(self.model).state_dict()
        save_projector(state_dict, os.path.join(output_dir, "mm_projector.safetensors"))


class LlavaStage2Trainer(_LlavaTrainer):
    """Stage 2 (instruction tuning): projector + LLM (or LoRA on the LLM with `peft_config`), tower frozen."""

    stage = 2
    config_class = LlavaStage2Config

    def __init__(self, model, args: Optional[LlavaStage2Config] = None, **kwargs):
        super().__init__(model, args, **kwargs)


class _TowerFeatureCache:
    """Caches the frozen vision tower's selected hidden states per image key, on CPU.

    It stands in for the tower's `forward` (an instance attribute, so parameter names and checkpoints are
    unchanged) while `using(keys)` is active: cached images skip the tower, the others run it once.
    """

    def __init__(self, model):
        self.tower = model.model.vision_tower if hasattr(model, "model") else model.vision_tower
        config = model.config
        layers = config.vision_feature_layer
        self.num_states = config.vision_config.num_hidden_layers + 1
        self.layers = sorted({i % self.num_states for i in ([layers] if isinstance(layers, int) else layers)})
        self.store: dict[str, tuple] = {}
        self.hits = self.misses = 0
        self._keys = None

    def using(self, keys):
        cache = self

        class _Ctx:
            def __enter__(self_inner):
                cache._keys = keys
                cache.tower.forward = cache._forward
                cache._original = type(cache.tower).forward.__get__(cache.tower)

            def __exit__(self_inner, *exc):
                cache._keys = None
                del cache.tower.forward

        return _Ctx()

    def _forward(self, pixel_values: torch.Tensor, *args, **kwargs):
        keys = self._keys
        tower_trains = any(p.requires_grad for p in self.tower.parameters())
        if keys is None or len(keys) != pixel_values.shape[0] or tower_trains:
            return self._original(pixel_values, *args, **kwargs)
        missing = [i for i, key in enumerate(keys) if key not in self.store]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            with torch.no_grad():
                out = self._original(pixel_values[missing], *args, **{**kwargs, "output_hidden_states": True})
            for j, i in enumerate(missing):
                self.store[keys[i]] = tuple(out.hidden_states[layer][j].detach().cpu() for layer in self.layers)
        states = [None] * self.num_states
        for li, layer in enumerate(self.layers):
            # (num_images, tokens, vision_hidden)
            states[layer] = torch.stack([self.store[k][li] for k in keys]).to(pixel_values.device)
        return SimpleNamespace(hidden_states=tuple(states), last_hidden_state=None)


__all__ = ["LlavaStage1Trainer", "LlavaStage2Trainer"]
