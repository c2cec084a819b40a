"""LLaVA-NeXT (AnyRes) on the same trainers: a fresh NeXT from a tower and an LM, stage 1 and stage 2 steps on
images of mixed aspect ratios (what trains, the vision tower's own rate and its log), the projector file with the
image newline, and `hf-llava train ... --image-aspect-ratio anyres` (built, or refused for a model that disagrees)."""

import logging

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoProcessor

from hf_llava import LlavaConfig, LlavaForConditionalGeneration, cli, from_vision_and_text
from hf_llava.builder import image_processor_for
from hf_llava.data import load_llava_dataset
from hf_llava.modeling.configuration_llava import default_grid_pinpoints
from hf_llava.trainers import (LlavaStage1Config, LlavaStage1Trainer, LlavaStage2Config, LlavaStage2Trainer,
                               lm_lora_config, load_projector, save_projector)

from .conftest import fast, write_caption_data

_FAST = ["--max-steps", "2", "--batch-size", "4", "--logging-steps", "1"]


@pytest.fixture()
def next_data(tmp_path, next_images):
    """8 captioned images cycling through wide (1x3 tiles), tall (3x1) and about square (2x2)."""
    path, folder = write_caption_data(tmp_path, images=next_images)
    return load_llava_dataset(path, image_folder=folder)


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(model, before):
    """The parts whose parameters changed: vision, projector, newline, language."""
    parts = set()
    for key, value in model.state_dict().items():
        if not torch.equal(value, before[key]):
            parts.add("vision" if "vision_tower" in key else "projector" if "multi_modal_projector" in key
                      else "newline" if key.endswith("image_newline") else "language")
    return parts


def _losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_stage1_trains_projector_and_image_newline_on_mixed_tiles(tmp_path, next_model, next_processor, next_data):
    args = fast(LlavaStage1Config, tmp_path, image_aspect_ratio="anyres", per_device_train_batch_size=8,
                save_at_end=True)
    trainer = LlavaStage1Trainer(model=next_model, args=args, train_dataset=next_data, processing_class=next_processor)
    batch = trainer.data_collator([next_data[i] for i in range(8)])  # what each step gets: every aspect ratio
    assert batch["pixel_values"].shape == (8, 5, 3, 16, 16) and len(set(map(tuple, batch["image_sizes"].tolist()))) == 3
    before = _snapshot(next_model)
    trainer.train()
    assert _changed(next_model, before) == {"projector", "newline"}
    assert len(_losses(trainer)) == 2 and all(torch.isfinite(torch.tensor(_losses(trainer))))
    # the projector file carries the newline; it loads back into a fresh NeXT model
    saved = load_file(tmp_path / "out" / "mm_projector.safetensors")
    assert torch.equal(saved["model.image_newline"], next_model.model.image_newline.detach())
    fresh = LlavaForConditionalGeneration(next_model.config)
    load_projector(fresh, str(tmp_path / "out"))
    assert torch.equal(fresh.model.image_newline, next_model.model.image_newline)
    assert torch.equal(fresh.multi_modal_projector.linear_2.weight, next_model.multi_modal_projector.linear_2.weight)
    # a model without the newline refuses that file; a file without it (stage 1 on padded images) leaves it as it is
    pad_model = LlavaForConditionalGeneration(LlavaConfig.from_dict({**next_model.config.to_dict(),
                                                                     "image_aspect_ratio": "pad"}))
    with pytest.raises(ValueError, match="holds an AnyRes image_newline, but the model has none"):
        load_projector(pad_model, str(tmp_path / "out"))
    pad_file = save_projector(pad_model.state_dict(), str(tmp_path / "pad.safetensors"))
    newline = fresh.model.image_newline.detach().clone()
    load_projector(fresh, pad_file)
    assert torch.equal(fresh.model.image_newline, newline)
    assert torch.equal(fresh.multi_modal_projector.linear_2.weight, pad_model.multi_modal_projector.linear_2.weight)


def test_stage2_next_recipe_trains_the_tower_at_its_own_rate(tmp_path, next_model, next_processor, next_data):
    args = fast(LlavaStage2Config, tmp_path, image_aspect_ratio="anyres", per_device_train_batch_size=8,
                learning_rate=1e-3, vision_tower_lr=5e-4, warmup_ratio=0.0, lr_scheduler_type="constant")
    assert args.tune_vision_tower  # a rate for the tower trains it
    before = _snapshot(next_model)
    trainer = LlavaStage2Trainer(model=next_model, args=args, train_dataset=next_data, processing_class=next_processor)
    trainer.train()
    assert _changed(next_model, before) == {"vision", "projector", "newline", "language"}
    rates = {group["name"]: group["lr"] for group in trainer.optimizer.param_groups}
    assert rates == {"language_model": 1e-3, "vision_tower": 5e-4, "projector": 1e-3}
    projector_group = next(g for g in trainer.optimizer.param_groups if g["name"] == "projector")
    assert any(p is next_model.model.image_newline for p in projector_group["params"])
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in logs)
    assert all(h["learning_rate/vision_tower"] == pytest.approx(5e-4) for h in logs)


def test_lora_keeps_the_newline_and_refuses_a_tower_rate(tmp_path, next_model, next_processor, next_data, caplog):
    lora = lm_lora_config(r=4, lora_alpha=8)
    with pytest.raises(ValueError, match=r"vision_tower_lr\) with LoRA is not supported"):
        LlavaStage2Trainer(model=next_model, args=fast(LlavaStage2Config, tmp_path, image_aspect_ratio="anyres",
                                                       vision_tower_lr=2e-6),
                           train_dataset=next_data, processing_class=next_processor, peft_config=lora)
    with pytest.raises(ValueError, match="vision_tower_lr with optim='lomo'"):
        LlavaStage2Config(output_dir=str(tmp_path / "out"), optim="lomo", vision_tower_lr=2e-6)
    before = _snapshot(next_model)
    args = fast(LlavaStage2Config, tmp_path, image_aspect_ratio="anyres", learning_rate=1e-2, max_steps=1)
    with caplog.at_level(logging.WARNING):
        trainer = LlavaStage2Trainer(model=next_model, args=args, train_dataset=next_data,
                                     processing_class=next_processor, peft_config=lora)
        trainer.train()
    assert "LoRA: the AnyRes image_newline keeps its current values" in caplog.text
    assert torch.equal(next_model.model.image_newline, before["model.image_newline"])
    assert torch.isfinite(torch.tensor(_losses(trainer))).all()


def test_a_fresh_next_from_a_tower_and_an_lm(pretrained_parts, next_images):
    clip_path, llama_path, _, _ = pretrained_parts
    model, processor = from_vision_and_text(str(clip_path), str(llama_path), image_aspect_ratio="anyres")
    assert model.config.image_aspect_ratio == "anyres" and processor.anyres
    assert type(processor.image_processor).__name__.startswith("LlavaNextImageProcessor")
    assert processor.image_processor.image_grid_pinpoints == model.config.image_grid_pinpoints == \
        default_grid_pinpoints(28)
    tower_processor = image_processor_for(str(clip_path), "square")  # the tower's own settings carry over
    assert processor.image_processor.crop_size == tower_processor.crop_size
    assert processor.image_processor.image_mean == tower_processor.image_mean
    assert processor.patch_merge_type == model.config.patch_merge_type == "spatial_unpad"
    newline = model.model.image_newline
    assert not newline.is_meta and newline.requires_grad and torch.isfinite(newline).all() and newline.abs().sum() > 0
    # the processor's counts are the model's packing, for each aspect ratio
    inputs = processor(images=next_images, text=["<image> a", "b <image>", "<image>"], padding=True,
                       return_tensors="pt")
    assert inputs["pixel_values"].shape == (3, 5, 3, 28, 28)
    with torch.no_grad():
        assert model(**inputs).logits.shape[:2] == inputs["input_ids"].shape
    grids = [[28, 56], [56, 28]]
    model, processor = from_vision_and_text(str(clip_path), str(llama_path), image_aspect_ratio="anyres",
                                            image_grid_pinpoints=grids)
    assert processor.image_processor.image_grid_pinpoints == model.config.image_grid_pinpoints == grids
    assert image_processor_for(str(clip_path), "anyres").image_grid_pinpoints == default_grid_pinpoints(28)


def test_the_next_recipe_stage1_then_stage2_anyres_from_the_parts(tmp_path, pretrained_parts, next_images):
    """Stage 1 as LLaVA-1.5, then stage 2 builds a NeXT from the tower and the LM with stage 1's projector."""
    clip_path, llama_path, clip, _ = pretrained_parts
    data, folder = write_caption_data(tmp_path, images=next_images)
    parts = ["--vision-tower", str(clip_path), "--language-model", str(llama_path), "--data", str(data), "--images",
             str(folder), *_FAST]
    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    assert cli.main(["train", "stage1", "--output", str(out1), *parts]) == 0
    # --lr 0: the language model, projector and newline keep their start; the tower trains at its own rate
    assert cli.main(["train", "stage2", "--output", str(out2), "--projector", str(out1 / "mm_projector.safetensors"),
                     "--image-aspect-ratio", "anyres", "--lr", "0", "--vision-tower-lr", "1e-3", *parts]) == 0
    stage1, model = (LlavaForConditionalGeneration.from_pretrained(out) for out in (out1, out2))
    assert stage1.config.image_aspect_ratio != "anyres" and not hasattr(stage1.model, "image_newline")
    assert model.config.image_aspect_ratio == "anyres" and hasattr(model.model, "image_newline")
    for name, value in stage1.multi_modal_projector.state_dict().items():  # stage 1's projector was loaded
        assert torch.equal(model.multi_modal_projector.state_dict()[name], value), name
    processor = AutoProcessor.from_pretrained(out2)
    assert processor.anyres and processor.image_processor.image_grid_pinpoints == model.config.image_grid_pinpoints
    patches = model.vision_tower.get_input_embeddings().weight  # trained: --vision-tower-lr unfreezes the tower
    assert not torch.equal(patches, clip.vision_model.embeddings.patch_embedding.weight)


def test_train_refuses_a_model_whose_config_disagrees(tmp_path, saved_llava, saved_next, capsys, cli_error):
    data, folder = write_caption_data(tmp_path)
    common = ["--data", str(data), "--images", str(folder), *_FAST]
    out = tmp_path / "out"
    assert cli.main(["train", "stage2", "--model", str(saved_llava), "--output", str(out), "--image-aspect-ratio",
                     "anyres", *common]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    cli_error(lines, "train")
    assert "--image-aspect-ratio anyres needs an AnyRes model" in lines[0] and f"--model {saved_llava}" in lines[0]
    assert "'pad'" in lines[0] and "--vision-tower DIR" in lines[0] and not out.exists()
    assert cli.main(["train", "stage1", "--model", str(saved_next), "--output", str(out), *common]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    cli_error(lines, "train")
    assert f"--model {saved_next} is a LLaVA-NeXT (AnyRes) model" in lines[0]
    assert "pass --image-aspect-ratio anyres" in lines[0] and not out.exists()
    assert cli.main(["train", "stage1", "--model", str(saved_next), "--output", str(out), "--image-aspect-ratio",
                     "anyres", *common]) == 0
    assert "model.image_newline" in load_file(out / "mm_projector.safetensors")
