"""Stage 1 / stage 2 trainers: what trains, what stays bit-identical, LoRA placement, saving, the loss falls."""

import os

import pytest
import torch

from hf_llava import LlavaForConditionalGeneration
from hf_llava.trainers import (LlavaStage1Config, LlavaStage1Trainer, LlavaStage2Config, LlavaStage2Trainer,
                               lm_lora_config, load_stage1_output, merge_lora)

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
    from_file = load_stage1_output(str(projector_file), base_model=str(base))
    from_folder = load_stage1_output(str(tmp_path / "out"))
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
    args = fast(LlavaStage2Config, tmp_path, learning_rate=1e-3, tune_vision_tower=True, freeze_llm=True, warmup_ratio=0.0)
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
    merged = merge_lora(trainer.model, str(tmp_path / "merged"), tiny_processor)
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
