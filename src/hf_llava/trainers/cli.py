"""`hf-llava train stage1|stage2`: argument parsing for the two training stages; the work is the library's.

Order of a run: the output folder is checked, the data validated, then the model loads (slow) and trains,
so a bad input costs seconds and writes nothing; `--plan` prints the memory plan (`memory.py`) once the flags are
checked and stops there. Importing this module imports neither torch nor TRL.
"""

import argparse
import logging
import os

from ..data.llava_json import BAD_IMAGE_POLICIES, IMAGE_ASPECT_RATIOS, IMAGE_POSITIONS
from .recipe import LORA, NEXT, QLORA, STAGE1, STAGE2, stage_defaults

logger = logging.getLogger(__name__)

# The flags that set a field of the stage's config: (flag, config field, type or choices, help). Each flag's
# default is that config's default, read from recipe.py (building the flags from the config dataclasses
# themselves would import torch and TRL for `--help`, and list all of TrainingArguments' options).
_CONFIG_FLAGS = (
    ("--epochs", "num_train_epochs", float, "training epochs"),
    ("--batch-size", "per_device_train_batch_size", int,
     "per-device batch size (the recipe's global batch = this x devices x --grad-accum)"),
    ("--grad-accum", "gradient_accumulation_steps", int, "gradient accumulation steps"),
    ("--max-steps", "max_steps", int, "stop after this many steps (-1: --epochs decides)"),
    ("--max-length", "max_length", int, "token budget per sample (text is truncated)"),
    ("--save-steps", "save_steps", int, "write a checkpoint every this many steps"),
    ("--logging-steps", "logging_steps", int, "log loss and learning rates every N steps"),
    ("--seed", "seed", int, "random seed (also of --image-position random)"),
    ("--template", "template", str, "chat template (a CHAT_TEMPLATES name)"),
    ("--image-position", "image_position", IMAGE_POSITIONS,
     "the image in the first turn: before the question (LLaVA-1.5's code), random (the paper), keep (where the "
     "JSON puts <image>)"),
    ("--image-aspect-ratio", "image_aspect_ratio", IMAGE_ASPECT_RATIOS,
     "square: resize + centre crop (recipe, stage 1); pad: pad to a square with the mean colour first (recipe, "
     "stage 2); anyres: LLaVA-NeXT's tiles (an AnyRes --model, or one built from --vision-tower)"),
    ("--bad-image-policy", "bad_image_policy", BAD_IMAGE_POLICIES,
     "an unreadable or missing image: stop (error) or drop the sample and count it (skip)"),
)


def _add_common(parser: argparse.ArgumentParser, stage: int) -> None:
    recipe = STAGE1 if stage == 1 else STAGE2
    lrs = f"{recipe['learning_rate']}" + ("" if stage == 1 else f", {LORA['learning_rate']} with --lora")
    parser.add_argument("--model", default=None,
                        help="model folder (stage 2: a stage-1 output, or a base model with --projector)")
    parser.add_argument("--vision-tower", default=None, metavar="DIR",
                        help="instead of --model: build a fresh LLaVA from this CLIP / SigLIP folder and "
                             "--language-model")
    parser.add_argument("--language-model", default=None, metavar="DIR",
                        help="instead of --model: the causal LM folder (with its tokenizer) for --vision-tower")
    parser.add_argument("--projector-type", default="mlp2x_gelu",
                        help="projector of a model built with --vision-tower (linear, mlpNx_gelu, identity)")
    parser.add_argument("--merge-adapter", action="store_true",
                        help="--model is a LoRA adapter folder: load its base model and merge the adapter first")
    parser.add_argument("--data", required=True, help="LLaVA .json / .jsonl conversations")
    parser.add_argument("--images", dest="image_folder", metavar="DIR", default=None,
                        help="folder the samples' `image` paths resolve against (default: the working directory)")
    parser.add_argument("--output", required=True, help="output folder (checkpoints, final model, processor)")
    parser.add_argument("--overwrite", action="store_true",
                        help="train into a non-empty --output anyway (same-named files are replaced, others kept)")
    parser.add_argument("--resume", default=None,
                        help="continue from a checkpoint folder, or 'last' (the newest checkpoint-N in --output)")
    parser.add_argument("--lr", type=float, default=None, help=f"learning rate (default: the recipe's, {lrs})")
    parser.add_argument("--projector-lr", type=float, default=None,
                        help=f"the projector's learning rate (default: --lr; with --lora {LORA['projector_lr']})")
    defaults = stage_defaults(stage)
    for flag, name, kind, help_text in _CONFIG_FLAGS:
        if isinstance(kind, tuple):
            parser.add_argument(flag, dest=name, default=defaults[name], choices=kind, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=defaults[name], type=kind, help=help_text,
                                metavar=flag[2:].upper().replace("-", "_"))
    parser.add_argument("--gradient-checkpointing", action="store_true", default=None,
                        help="recompute activations in the backward pass to save memory")
    parser.add_argument("--deepspeed", default=None, metavar="JSON",
                        help="DeepSpeed config (ZeRO stage, offload), passed to the trainer as the original's scripts "
                             "do; launch with the deepspeed or accelerate launcher")
    parser.add_argument("--plan", action="store_true",
                        help="print the memory plan (parameters by part, bytes for weights, gradients, optimizer and "
                             "activations against the device found) and exit, without loading weights or images")
    if stage == 2:
        parser.add_argument("--projector", default=None,
                            help="mm_projector.safetensors (or its folder) to load into --model")
        parser.add_argument("--lora", action="store_true",
                            help=f"LoRA on the language model (lr {LORA['learning_rate']}, projector lr "
                                 f"{LORA['projector_lr']}); with --load-in 4bit QLoRA (lr {QLORA['learning_rate']} "
                                 "for both, gradient checkpointing)")
        parser.add_argument("--lora-r", type=int, default=None,
                            help=f"LoRA rank (default: {LORA['r']}; with --load-in, QLoRA's {QLORA['r']})")
        parser.add_argument("--lora-alpha", type=int, default=None,
                            help=f"LoRA alpha, the scale is alpha / r (default: {LORA['lora_alpha']}; with --load-in, "
                                 f"QLoRA's {QLORA['lora_alpha']})")
        parser.add_argument("--merge-lora", action="store_true",
                            help="also write the merged model to OUTPUT/merged (with --load-in: merged into the base "
                                 "loaded in full precision)")
        from .._cli_args import add_quantization_arguments

        add_quantization_arguments(parser)  # with --lora: QLoRA
        parser.add_argument("--tune-vision-tower", action="store_true", help="also train the vision tower")
        parser.add_argument("--vision-tower-lr", type=float, default=None,
                            help=f"the vision tower's learning rate; also trains the tower (LLaVA-NeXT: "
                                 f"{NEXT['vision_tower_lr']} with --lr {NEXT['learning_rate']})")
        parser.add_argument("--freeze-llm", action="store_true", help="keep the language model frozen")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Adds `stage1` and `stage2` sub-commands to the `train` parser."""
    from .._cli_args import add_parser

    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    _add_common(add_parser(sub, "stage1", "feature alignment: train the projector (template plain)"), 1)
    _add_common(add_parser(sub, "stage2", "instruction tuning: projector + LLM or LoRA (template vicuna_v1)"), 2)


def _config(args: argparse.Namespace):
    """The stage's config from the flags (the recipe's values where a flag is not given)."""
    from .configs import LlavaStage1Config, LlavaStage2Config

    stage1 = args.stage == "stage1"
    kwargs = {name: getattr(args, name) for _, name, _, _ in _CONFIG_FLAGS}
    kwargs.update(output_dir=args.output, projector_lr=args.projector_lr,
                  gradient_checkpointing=args.gradient_checkpointing)
    if args.deepspeed is not None and not args.plan:  # --plan reads the file itself, with or without DeepSpeed
        kwargs["deepspeed"] = _check_deepspeed(args.deepspeed)
    recipe = QLORA if not stage1 and args.load_in else LORA
    if not stage1 and args.load_in and args.gradient_checkpointing is None:
        kwargs["gradient_checkpointing"] = QLORA["gradient_checkpointing"]
    if args.lr is not None:
        kwargs["learning_rate"] = args.lr
    elif not stage1 and args.lora:
        kwargs["learning_rate"] = recipe["learning_rate"]
        kwargs["projector_lr"] = args.projector_lr or recipe["projector_lr"]
    if stage1:
        return LlavaStage1Config(**kwargs)
    return LlavaStage2Config(tune_vision_tower=args.tune_vision_tower, freeze_llm=args.freeze_llm,
                             vision_tower_lr=args.vision_tower_lr, **kwargs)


def _processor_folder(model: str) -> str:
    """Where the processor of `--model` is: the folder, or an adapter's base model (AutoProcessor needs a
    config.json to find the processor class, and an adapter folder has none)."""
    from .._loading import is_adapter, resolve_adapter_base

    return resolve_adapter_base(model) if is_adapter(model) else model


def _check_aspect_ratio(model: str, image_aspect_ratio: str) -> None:
    """Refuse AnyRes images for a fixed-resolution model and the reverse (read from its config, before it loads)."""
    from transformers import AutoConfig

    saved = getattr(AutoConfig.from_pretrained(_processor_folder(model)), "image_aspect_ratio", "pad")
    if saved == "anyres" and image_aspect_ratio != "anyres":
        raise ValueError(f"model={model!r} is a LLaVA-NeXT (AnyRes) model, which takes images as tiles; pass "
                         "image_aspect_ratio='anyres'.")
    if saved != "anyres" and image_aspect_ratio == "anyres":
        raise ValueError(f"image_aspect_ratio='anyres' needs an AnyRes model, but model={model!r} has "
                         f"image_aspect_ratio {saved!r} in its config: build one with vision_tower=DIR and "
                         "language_model=DIR (stage 2: with projector=FILE from stage 1).")


def _check_model_source(args: argparse.Namespace) -> bool:
    """`--model`, or `--vision-tower` + `--language-model` (a fresh LLaVA: the recipe's start); True for the latter."""
    parts = (args.vision_tower, args.language_model)
    if args.model is not None and any(parts):
        raise ValueError("pass either model=DIR or vision_tower=DIR with language_model=DIR, not both.")
    if args.model is None and args.merge_adapter:
        raise ValueError("merge_adapter=True merges the LoRA adapter given as model=DIR; a model built from "
                         "vision_tower=DIR and language_model=DIR has none: drop merge_adapter=True.")
    if args.model is None and not all(parts):
        raise ValueError("pass model=DIR (a saved hf-llava folder), or vision_tower=DIR and language_model=DIR to "
                         "build a fresh LLaVA from a pretrained tower and LM.")
    for path in parts:
        if path is not None and not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"{path}: not a model folder (no config.json); pass a local folder written by "
                                    "save_pretrained.")
    return args.model is None


def _check_quantization(args: argparse.Namespace, built: bool):
    """The `BitsAndBytesConfig` of --load-in (stage 2 only), refused where it cannot apply."""
    if args.stage == "stage1":
        return None
    if args.load_in is not None and not args.lora:
        raise ValueError(f"--load-in {args.load_in}: quantised weights cannot train; add --lora to train LoRA "
                         "adapters on the quantised language model (QLoRA).")
    if args.load_in is not None and built:
        raise ValueError("--load-in quantises a saved model while it loads: pass --model DIR (save the LLaVA built "
                         "from --vision-tower and --language-model first, e.g. as stage 1 does).")
    from .._cli_args import quantization_config

    return quantization_config(args)


def _check_deepspeed(path: str) -> str:
    """`--deepspeed`: an existing JSON file, and the package installed."""
    import importlib.util

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--deepspeed {path}: no such file; pass a DeepSpeed config JSON.")
    if importlib.util.find_spec("deepspeed") is None:
        raise ValueError(f"--deepspeed {path} needs the deepspeed package: pip install deepspeed.")
    return path


def _zero_stage(args: argparse.Namespace) -> int:
    """The ZeRO stage of `--deepspeed JSON`, else of `accelerate launch --use_deepspeed --zero_stage N`, else 0."""
    import json

    if args.deepspeed is not None:
        try:
            with open(args.deepspeed, encoding="utf-8") as f:
                stage = json.load(f).get("zero_optimization", {}).get("stage", 0)
        except (OSError, ValueError, AttributeError) as error:
            raise ValueError(f"--deepspeed {args.deepspeed}: not a readable DeepSpeed config JSON ({error}).") from None
        if stage not in (0, 1, 2, 3):
            raise ValueError(f"--deepspeed {args.deepspeed}: zero_optimization.stage {stage!r}, expected 0-3.")
        return stage
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", 2))  # accelerate's default stage
    return 0


def _memory_plan(args: argparse.Namespace, config, built: bool):
    """The memory plan of the run the flags describe (`memory.plan_training`), from the model's config alone."""
    import torch
    from transformers import AutoConfig

    from .memory import loaded_dtypes, plan_training

    if built:
        from ..builder import tower_config
        from ..modeling import LlavaConfig

        llava_config = LlavaConfig(vision_config=tower_config(args.vision_tower).to_dict(),
                                   text_config=AutoConfig.from_pretrained(args.language_model).to_dict(),
                                   projector_type=args.projector_type,
                                   image_aspect_ratio="anyres" if config.image_aspect_ratio == "anyres" else "pad")
    else:
        llava_config = AutoConfig.from_pretrained(_processor_folder(args.model))
    stage = 1 if args.stage == "stage1" else 2
    load_in = getattr(args, "load_in", None) if stage == 2 else None
    lora = stage == 2 and args.lora
    recipe = QLORA if load_in else LORA
    checkpointing = getattr(config, "activation_checkpointing", None) or config.gradient_checkpointing
    devices = int(os.environ.get("WORLD_SIZE", 0)) or torch.cuda.device_count() or 1
    return plan_training(
        llava_config, stage=stage, lora=lora, lora_r=getattr(args, "lora_r", None) or recipe["r"],
        tune_vision_tower=getattr(config, "tune_vision_tower", False), freeze_llm=getattr(config, "freeze_llm", False),
        load_in=load_in, bnb_double_quant=getattr(args, "bnb_double_quant", None) is not False,
        dtypes=loaded_dtypes(llava_config, built), mixed_precision="bf16" if config.bf16 else "fp16" if config.fp16
        else None, batch_size=config.per_device_train_batch_size, max_length=config.max_length,
        gradient_checkpointing=bool(checkpointing), zero_stage=_zero_stage(args), num_devices=devices,
    )


def run(args: argparse.Namespace) -> int:
    """Checks the output folder and the data, then loads the model, trains and saves (see the module's order)."""
    from .._loading import check_merge_adapter, is_adapter
    from . import require_training
    from .outputs import check_training_output, training_output

    require_training(f"hf-llava train {args.stage}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    stage1 = args.stage == "stage1"
    lora = not stage1 and args.lora
    built = _check_model_source(args)
    quantization = _check_quantization(args, built)
    if not built:
        check_merge_adapter(args.model, args.merge_adapter, "model")
    if args.plan:  # nothing is written, no weights or images are read
        print(_memory_plan(args, _config(args), built).format())
        return 0
    resume = check_training_output(args.output, overwrite=args.overwrite, resume=args.resume)
    if lora and is_adapter(args.model):
        raise ValueError(f"model={args.model!r} is a LoRA adapter: a new adapter needs its base model as a folder; "
                         "pass the merged model (merge_lora=True writes OUTPUT/merged) or train without lora=True.")

    from ..data import load_llava_dataset

    dataset = load_llava_dataset(args.data, image_folder=args.image_folder, bad_image_policy=args.bad_image_policy,
                                 source=f"--data {args.data}")
    config = _config(args)
    if not built:
        _check_aspect_ratio(args.model, config.image_aspect_ratio)
    logger.info("%s", _memory_plan(args, config, built).format())

    from transformers import AutoProcessor

    from . import LlavaStage1Trainer, LlavaStage2Trainer, lm_lora_config, load_model_with_projector, merge_lora

    with training_output(args.output):
        if built:
            from ..builder import from_vision_and_text

            # `pad` builds LLaVA-1.5's processor, which also serves `square` (the collator skips its padding)
            image_aspect_ratio = "anyres" if config.image_aspect_ratio == "anyres" else "pad"
            model, processor = from_vision_and_text(args.vision_tower, args.language_model,
                                                    image_aspect_ratio=image_aspect_ratio,
                                                    projector_type=args.projector_type)
            if not stage1 and args.projector:
                from .projector import load_projector

                load_projector(model, args.projector)
        else:
            quantized = {} if quantization is None else {"quantization_config": quantization,
                                                         "device_map": {"": config.device}}
            model = load_model_with_projector(args.model, None if stage1 else args.projector,
                                              merge_adapter=args.merge_adapter, **quantized)
            processor = AutoProcessor.from_pretrained(_processor_folder(args.model))
        common = dict(model=model, args=config, train_dataset=dataset, processing_class=processor)
        if stage1:
            trainer = LlavaStage1Trainer(**common)
        else:
            recipe = QLORA if quantization is not None else LORA
            rank = {name: recipe[name] if value is None else value
                    for name, value in (("r", args.lora_r), ("lora_alpha", args.lora_alpha))}
            peft_config = lm_lora_config(**rank) if lora else None
            trainer = LlavaStage2Trainer(peft_config=peft_config, **common)
        trainer.train(resume_from_checkpoint=resume)
        if lora and args.merge_lora:
            merged_dir = os.path.join(args.output, "merged")
            if quantization is None:
                merge_lora(trainer.model, merged_dir, processor)
            else:  # merging into 4 / 8-bit weights would round them again: the adapter goes onto the full base
                from .._loading import load_llava_model

                logger.info("--merge-lora: merging the adapter into %s loaded in full precision, not into the "
                            "%s training copy", args.model, args.load_in)
                merge_lora(load_llava_model(args.output, merge_adapter=True), merged_dir, processor)
            logger.info("Merged model written to %s", merged_dir)
    logger.info("Stage %s done: %s", args.stage[-1], args.output)
    trainer.accelerator.end_training()  # tears down the process group: a live one can abort the interpreter at exit
    return 0


__all__ = ["configure_parser", "run"]
