"""`hf-llava train stage1|stage2`: argument parsing for the two training stages; the work is the library's."""

import argparse
import logging
import os

logger = logging.getLogger(__name__)


def _add_common(parser: argparse.ArgumentParser, stage: int) -> None:
    parser.add_argument("--model", required=True, help="model folder (stage 2: a stage-1 output, or a base model with --projector)")
    parser.add_argument("--data", required=True, help="LLaVA .json / .jsonl conversations")
    parser.add_argument("--images", default=None, help="folder the samples' `image` paths are relative to")
    parser.add_argument("--output", required=True, help="output folder (checkpoints, final model, processor)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=16, help="per-device batch size")
    parser.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: the recipe's)")
    parser.add_argument("--projector-lr", type=float, default=None)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--save-steps", type=int, default=500)
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--template", default=None, help="chat template (default: plain for stage 1, vicuna_v1 for 2)")
    parser.add_argument("--image-position", default="random", choices=["random", "before", "keep"])
    parser.add_argument("--bad-image-policy", default="error", choices=["error", "skip"])
    parser.add_argument("--resume", default=None, help="checkpoint folder to resume from, or 'last'")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    if stage == 1:
        parser.add_argument("--cache-image-features", action="store_true", help="reuse tower features across epochs")
    else:
        parser.add_argument("--projector", default=None, help="mm_projector.safetensors to load into --model")
        parser.add_argument("--lora", action="store_true", help="LoRA on the language model (r 128, alpha 256)")
        parser.add_argument("--lora-r", type=int, default=128)
        parser.add_argument("--lora-alpha", type=int, default=256)
        parser.add_argument("--merge-lora", action="store_true", help="also write the merged model to OUTPUT/merged")
        parser.add_argument("--tune-vision-tower", action="store_true")
        parser.add_argument("--freeze-llm", action="store_true")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Adds `stage1` and `stage2` sub-commands to the `train` parser."""
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    _add_common(sub.add_parser("stage1", help="feature alignment: train the projector (template plain)"), 1)
    _add_common(sub.add_parser("stage2", help="instruction tuning: projector + LLM or LoRA (template vicuna_v1)"), 2)


def run(args: argparse.Namespace) -> int:
    """Builds the config, model, processor, dataset and trainer for `args.stage`, trains and saves."""
    from transformers import AutoProcessor

    from ..data import load_llava_dataset
    from . import (LlavaStage1Config, LlavaStage1Trainer, LlavaStage2Config, LlavaStage2Trainer, lm_lora_config,
                   load_stage1_output, merge_lora)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    stage1 = args.stage == "stage1"
    config_class = LlavaStage1Config if stage1 else LlavaStage2Config
    kwargs = dict(
        output_dir=args.output, num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, max_steps=args.max_steps, max_length=args.max_length,
        save_steps=args.save_steps, logging_steps=args.logging_steps, seed=args.seed, image_position=args.image_position,
        bad_image_policy=args.bad_image_policy, projector_lr=args.projector_lr,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    if args.gradient_checkpointing:
        kwargs["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    if args.lr is not None:
        kwargs["learning_rate"] = args.lr
    elif not stage1 and args.lora:
        kwargs["learning_rate"] = 2e-4  # the recipe's LoRA learning rates
        kwargs["projector_lr"] = args.projector_lr or 2e-5
    if args.template is not None:
        kwargs["template"] = args.template
    if stage1:
        kwargs["cache_image_features"] = args.cache_image_features
    else:
        kwargs.update(tune_vision_tower=args.tune_vision_tower, freeze_llm=args.freeze_llm)
    config = config_class(**kwargs)

    if stage1 or args.projector is None:
        model = load_stage1_output(args.model)
    else:
        model = load_stage1_output(args.projector, base_model=args.model)
    processor = AutoProcessor.from_pretrained(args.model)
    dataset = load_llava_dataset(args.data, image_folder=args.images, bad_image_policy=args.bad_image_policy)
    peft_config = None
    if not stage1 and args.lora:
        peft_config = lm_lora_config(r=args.lora_r, lora_alpha=args.lora_alpha)
    trainer_class = LlavaStage1Trainer if stage1 else LlavaStage2Trainer
    trainer = trainer_class(model=model, args=config, train_dataset=dataset, processing_class=processor,
                            **({} if stage1 else {"peft_config": peft_config}))
    resume = args.resume
    if resume == "last":
        resume = True
    trainer.train(resume_from_checkpoint=resume)
    if not stage1 and args.lora and args.merge_lora:
        merged_dir = os.path.join(args.output, "merged")
        merge_lora(trainer.model, merged_dir, processor)
        logger.info("Merged model written to %s", merged_dir)
    logger.info("Stage %s done: %s", args.stage[-1], args.output)
    trainer.accelerator.end_training()  # tears down the process group: a live one can abort the interpreter at exit
    return 0


__all__ = ["configure_parser", "run"]
