"""Stage 1 / stage 2 trainers: what trains, what stays bit-identical, learning rates per part (and their logs),
LoRA placement, saving, the recipe's defaults, a quiet normal path, the loss falls."""

import logging
import os
import warnings

import pytest
import torch

from hf_llava import LlavaForConditionalGeneration, tiny
from hf_llava.trainers import (LlavaStage1Config, LlavaStage1Trainer, LlavaStage2Config, LlavaStage2Trainer,
                               lm_lora_config, load_model_with_projector, merge_lora)

from .conftest import fast


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(model, before, part):
    return [k for k, v in model.state_dict().items() if part in k and not torch.equal(v, before[k])]


def _lm_keys(before):
    return [k for k in before if "vision_tower" not in k and "multi_modal_projector" not in k]


def test_stage1_trains_projector_only_and_saves_it(tmp_path, tiny_model, tiny_processor, caption_data):
    before = _snapshot(tiny_model)
    args = fast(LlavaStage1Config, tmp_path, save_at_end=True)
    trainer = LlavaStage1Trainer(model=tiny_model, args=args, train_dataset=caption_data,
                                 processing_class=tiny_processor)
    trainer.train()
    after = tiny_model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before if "vision_tower" in k)
    assert all(torch.equal(after[k], before[k]) for k in _lm_keys(before))
    assert len(_changed(tiny_model, before, "multi_modal_projector")) == 4
    # projector alone beside the full model; stage 2 can start from either
    projector_file = tmp_path / "out" / "mm_projector.safetensors"
    assert projector_file.is_file() and (tmp_path / "out" / "model.safetensors").is_file()
    base = tmp_path / "base"
    LlavaForConditionalGeneration(tiny_model.config).save_pretrained(base)
    from_file = load_model_with_projector(str(base), projector=str(projector_file))
    from_folder = load_model_with_projector(str(tmp_path / "out"))
    for name, value in tiny_model.model.multi_modal_projector.state_dict().items():
        assert torch.equal(from_file.model.multi_modal_projector.state_dict()[name], value)
        assert torch.equal(from_folder.model.multi_modal_projector.state_dict()[name], value)


def test_stage2_freezes_tower_trains_lm_and_projector_lr(tmp_path, tiny_model, tiny_processor, caption_data):
    before = _snapshot(tiny_model)
    args = fast(LlavaStage2Config, tmp_path, learning_rate=1e-3, projector_lr=5e-4)
    trainer = LlavaStage2Trainer(model=tiny_model, args=args, train_dataset=caption_data,
                                 processing_class=tiny_processor)
    trainer.train()
    assert not _changed(tiny_model, before, "vision_tower")
    assert _changed(tiny_model, before, "language_model") and _changed(tiny_model, before, "lm_head")
    assert _changed(tiny_model, before, "multi_modal_projector")
    projector_ids = {id(p) for p in tiny_model.model.multi_modal_projector.parameters()}
    lrs = {("projector" if id(g["params"][0]) in projector_ids else "other"): g["initial_lr"]
           for g in trainer.optimizer.param_groups}
    assert lrs == {"projector": 5e-4, "other": 1e-3}


def test_stage2_options_tune_tower_and_freeze_llm(tmp_path, tiny_model, tiny_processor, caption_data):
    before = _snapshot(tiny_model)
    args = fast(LlavaStage2Config, tmp_path, learning_rate=1e-3, tune_vision_tower=True, freeze_llm=True,
                warmup_ratio=0.0)
    LlavaStage2Trainer(model=tiny_model, args=args, train_dataset=caption_data, processing_class=tiny_processor).train()
    assert _changed(tiny_model, before, "vision_tower")
    assert all(torch.equal(tiny_model.state_dict()[k], before[k]) for k in _lm_keys(before))


def test_lora_touches_no_vision_parameter_and_merges(tmp_path, tiny_model, tiny_processor, caption_data):
    before = _snapshot(tiny_model)
    args = fast(LlavaStage2Config, tmp_path, learning_rate=1e-2)
    trainer = LlavaStage2Trainer(model=tiny_model, args=args, train_dataset=caption_data,
                                 processing_class=tiny_processor, peft_config=lm_lora_config(r=4, lora_alpha=8))
    trainer.train()
    names = [n for n, _ in trainer.model.named_modules()]
    assert any("language_model" in n and n.endswith("lora_A") for n in names)
    assert not any("vision_tower" in n and "lora" in n for n in names)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert not any("vision_tower" in n for n in trainable)
    assert any("multi_modal_projector.modules_to_save" in n for n in trainable)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merged = merge_lora(trainer.model, str(tmp_path / "merged"), tiny_processor)
    assert not [w for w in caught if "no longer tied" in str(w.message)]  # the LM's embeddings never were tied
    assert isinstance(merged, LlavaForConditionalGeneration)
    after = merged.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before if "vision_tower" in k)
    assert not torch.equal(after["model.language_model.layers.0.self_attn.q_proj.weight"],
                           before["model.language_model.layers.0.self_attn.q_proj.weight"])
    assert not torch.equal(after["model.multi_modal_projector.linear_1.weight"],
                           before["model.multi_modal_projector.linear_1.weight"])
    assert os.path.isfile(tmp_path / "merged" / "model.safetensors")


def test_lora_list_targets_hitting_clip_are_refused(tmp_path, tiny_model, tiny_processor, caption_data):
    from peft import LoraConfig

    with pytest.raises(ValueError, match="vision tower"):
        LlavaStage2Trainer(model=tiny_model, args=fast(LlavaStage2Config, tmp_path), train_dataset=caption_data,
                           processing_class=tiny_processor, peft_config=LoraConfig(r=4, target_modules=["q_proj"]))


def test_loss_falls_on_a_learnable_task(tmp_path, tiny_model, tiny_processor, caption_data):
    args = fast(LlavaStage2Config, tmp_path, learning_rate=3e-3, max_steps=24, warmup_ratio=0.0,
                lr_scheduler_type="constant")
    trainer = LlavaStage2Trainer(model=tiny_model, args=args, train_dataset=caption_data,
                                 processing_class=tiny_processor)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 24
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3


def test_string_model_is_refused(tmp_path, tiny_processor, caption_data):
    with pytest.raises(TypeError, match="model instance"):
        LlavaStage1Trainer(model="some/model", args=fast(LlavaStage1Config, tmp_path), train_dataset=caption_data,
                           processing_class=tiny_processor)


def _rates(trainer):
    return {group["name"]: group["lr"] for group in trainer.optimizer.param_groups}


def test_lora_run_logs_each_parts_learning_rate(tmp_path, tiny_model, tiny_processor, caption_data):
    args = fast(LlavaStage2Config, tmp_path, learning_rate=2e-4, projector_lr=2e-5, warmup_ratio=0.0,
                lr_scheduler_type="constant")
    trainer = LlavaStage2Trainer(model=tiny_model, args=args, train_dataset=caption_data,
                                 processing_class=tiny_processor, peft_config=lm_lora_config(r=4, lora_alpha=8))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for entry in logs:
        assert entry["learning_rate/language_model"] == pytest.approx(2e-4)
        assert entry["learning_rate/projector"] == pytest.approx(2e-5)
        assert entry["learning_rate"] == pytest.approx(2e-4)  # Trainer's own key: the language model's rate
    assert _rates(trainer) == {"language_model": pytest.approx(2e-4), "projector": pytest.approx(2e-5)}


def test_optimizer_is_trainers_own_with_the_projector_split_out(tmp_path, tiny_model, tiny_processor, caption_data):
    # Optimizer kwargs that bring their own parameter groups (as GaLore's do) are Trainer.create_optimizer's to
    # honour; the projector is then moved into its own group with every other setting of its group kept.
    trainable = [p for n, p in tiny_model.named_parameters() if "vision_tower" not in n]
    groups = [{"params": trainable, "weight_decay": 0.1, "amsgrad": True}]
    args = fast(LlavaStage2Config, tmp_path, learning_rate=1e-3, projector_lr=5e-4)
    trainer = LlavaStage2Trainer(model=tiny_model, args=args, train_dataset=caption_data,
                                 processing_class=tiny_processor,
                                 optimizer_cls_and_kwargs=(torch.optim.AdamW, {"lr": 1e-3, "params": groups}))
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["name"] for g in optimizer.param_groups] == ["language_model", "projector"]
    assert _rates(trainer) == {"language_model": 1e-3, "projector": 5e-4}
    assert all(g["weight_decay"] == 0.1 and g["amsgrad"] for g in optimizer.param_groups)
    projector = {id(p) for p in tiny_model.model.multi_modal_projector.parameters()}
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == projector


def test_projector_lr_with_an_optimizer_without_groups_is_refused(tmp_path):
    with pytest.raises(ValueError, match="projector_lr with optim='lomo'"):
        LlavaStage2Config(output_dir=str(tmp_path / "out"), optim="lomo", projector_lr=2e-5)


def test_recipe_defaults_per_stage(tmp_path, tiny_model, tiny_processor, caption_data):
    stage1, stage2 = LlavaStage1Config(output_dir=str(tmp_path)), LlavaStage2Config(output_dir=str(tmp_path))
    assert (stage1.template, stage1.image_aspect_ratio, stage1.learning_rate) == ("plain", "square", 1e-3)
    assert (stage2.template, stage2.image_aspect_ratio, stage2.learning_rate) == ("vicuna_v1", "pad", 2e-5)
    assert stage1.image_position == stage2.image_position == "before"
    with pytest.raises(ValueError, match="image_aspect_ratio='crop'"):
        LlavaStage1Config(output_dir=str(tmp_path), image_aspect_ratio="crop")
    # stage 1 resizes and centre-crops: a wide image is cropped, not padded
    wide = tiny.demo_image(40, seed=5).resize((80, 40))
    path = tmp_path / "wide.png"
    wide.save(path)
    row = {"id": "w", "image": str(path), "conversations": caption_data[0]["conversations"]}
    trainer = LlavaStage1Trainer(model=tiny_model, args=fast(LlavaStage1Config, tmp_path), train_dataset=caption_data,
                                 processing_class=tiny_processor)
    cropped = tiny_processor(images=wide, do_pad=False)["pixel_values"][0]
    assert torch.allclose(trainer.data_collator([row])["pixel_values"][0], torch.from_numpy(cropped))


def test_pin_memory_follows_the_hardware_unless_set(tmp_path):
    assert LlavaStage1Config(output_dir=str(tmp_path)).dataloader_pin_memory == torch.cuda.is_available()
    assert LlavaStage1Config(output_dir=str(tmp_path), dataloader_pin_memory=True).dataloader_pin_memory is True


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _train_collecting(tmp_path, model, processor, data):
    """Trains stage 1 for two steps; returns the warnings and transformers' log warnings it raised."""
    handler = _Collect()
    transformers_logger = logging.getLogger("transformers")  # it does not propagate to the root logger
    transformers_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            LlavaStage1Trainer(model=model, args=fast(LlavaStage1Config, tmp_path), train_dataset=data,
                               processing_class=processor).train()
    finally:
        transformers_logger.removeHandler(handler)
    return [str(w.message) for w in caught], handler.messages


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path: no accelerator to pin memory for")
def test_training_on_cpu_does_not_warn_about_pin_memory(tmp_path, tiny_model, tiny_processor, caption_data):
    caught, _ = _train_collecting(tmp_path, tiny_model, tiny_processor, caption_data)
    assert not [m for m in caught if "pin_memory" in m]


def test_training_the_tiny_model_does_not_realign_special_tokens(tmp_path, tiny_model, tiny_processor, caption_data):
    _, logged = _train_collecting(tmp_path, tiny_model, tiny_processor, caption_data)
    assert not [m for m in logged if "PAD/BOS/EOS" in m]


def test_stage2_pads_with_a_clip_image_processor(tmp_path, tokenizer, tiny_config, tiny_model, caption_data):
    """llava-hf checkpoints carry a CLIPImageProcessor: stage 2's default `pad` works with it (the original pads in
    its data pipeline, whatever the image processor)."""
    clip_processor = tiny.build_processor(tokenizer, tiny_config, pad=False)
    args = fast(LlavaStage2Config, tmp_path, max_steps=1)
    assert args.image_aspect_ratio == "pad"
    trainer = LlavaStage2Trainer(model=tiny_model, args=args, train_dataset=caption_data,
                                 processing_class=clip_processor)
    trainer.train()
    assert [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_a_template_whose_end_the_tokenizer_lacks_is_refused(tmp_path, tiny_config, tiny_model, caption_data):
    qwen_like = tiny.build_tokenizer(eos_token="<|endoftext|>")  # no `</s>`: vicuna_v1's end would be text
    before = {n: p.requires_grad for n, p in tiny_model.named_parameters()}
    with pytest.raises(ValueError, match="template='vicuna_v1' ends each answer with '</s>'"):
        LlavaStage2Trainer(model=tiny_model, args=fast(LlavaStage2Config, tmp_path), train_dataset=caption_data,
                           processing_class=tiny.build_processor(qwen_like, tiny_config))
    assert {n: p.requires_grad for n, p in tiny_model.named_parameters()} == before  # refused before freezing


@pytest.mark.parametrize("checkpointing", [None, True])
def test_the_normal_path_gives_no_checkpointing_future_warning(tmp_path, tiny_model, tiny_processor, caption_data,
                                                               checkpointing):
    """transformers 5.x renamed `gradient_checkpointing` (the old name warns); TRL's default of True for it made
    every config warn. Ours takes the old name on both lines and warns about nothing."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = fast(LlavaStage2Config, tmp_path, max_steps=1, gradient_checkpointing=checkpointing)
        trainer = LlavaStage2Trainer(model=tiny_model, args=args, train_dataset=caption_data,
                                     processing_class=tiny_processor)
        trainer.train()
    future = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert not [m for m in future if "checkpointing" in m], future
    assert args.gradient_checkpointing is bool(checkpointing)
    # `is_activation_checkpointing` on transformers 5.x, where the old name warns
    active = getattr(tiny_model, "is_activation_checkpointing", None)
    assert (tiny_model.is_gradient_checkpointing if active is None else active) is bool(checkpointing)
    if checkpointing:
        assert args.gradient_checkpointing_kwargs == {"use_reentrant": False}
