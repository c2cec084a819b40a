"""`hf-llava demo`: the paper end to end on the embedded world, offline, trained for real in minutes.

The steps, each through the library's public API (the same code paths as the CLI commands):
1. the world (`hf_llava.world`): training scenes, and validation and test scenes held out by content (none shows
   what a pretraining scene, the vision tower's near miss of one, a training or a prompt-example scene shows),
   pictures with captions and boxes;
2. LLaVA from the shipped pretrained tower and LM (`from_vision_and_text`);
3. data: `hf_llava.datagen.generate` with the offline text-only teacher (conversation, detail, complex),
   and stage-1 caption data from the captions;
4. stage 1 (projector, `plain`) then stage 2 (projector + LM, `vicuna_v1`) with the stage trainers, and the
   ablation's stage 2 without stage 1;
5. VQA accuracy per question type on the test scenes (`hf_llava.eval`) for stage 1 only, stage 2 only and
   stage 1 + stage 2, each with its 95% Wilson interval, and on the same questions in wordings no training data
   uses ("unseen phrasing"), against two blind guessers (uniform chance, the most common training answer);
6. ONNX export of the final model and an ONNX Runtime answer about a new scene, checked against PyTorch.
Writes the data, the checkpoints, `onnx/`, `loss.png` and `report.json` into the output folder.
"""

import argparse
import json
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

DEFAULT_OUTPUT = "hf-llava-demo"
SEED = 0
STAGE1_INSTRUCTION = "Describe the image briefly."  # stage 1's `plain` template drops it, as LLaVA's does
DATAGEN_TYPES = ("conversation", "detail", "complex")
ABLATIONS = {"stage1_only": "(a) stage 1 only", "stage2_only": "(b) stage 2 only",
             "stage1_stage2": "(c) stage 1 + stage 2"}


@dataclass(frozen=True)
class DemoSize:
    """How much of everything a run does (`FULL`, or `QUICK` for CI)."""

    train_scenes: int
    val_scenes: int
    test_scenes: int
    stage1_steps: int
    stage2_steps: int
    batch_size: int
    stage1_lr: float
    stage2_lr: float


# Stage 1 keeps the recipe's learning rate, 1e-3 (at 5e-3 the projector's tokens grew to ~320 times the norm
# of the LM's shorthand pictures, and stage 1 + 2 ended below stage 2 alone). Stage 2's, 2e-5, is for a 7B LM
# and batches of 128: a 3-layer LM and batches of 16 need larger steps. Stage 1, projector only, is cheap
# enough to run longer.
FULL = DemoSize(train_scenes=3000, val_scenes=100, test_scenes=100, stage1_steps=1200, stage2_steps=600, batch_size=16,
                stage1_lr=1e-3, stage2_lr=1e-3)
QUICK = DemoSize(train_scenes=1000, val_scenes=40, test_scenes=40, stage1_steps=400, stage2_steps=200, batch_size=16,
                 stage1_lr=1e-3, stage2_lr=1e-3)


def default_output(cwd: Optional[Path] = None) -> Path:
    """`./hf-llava-demo`, or `-2`, `-3`... : the first name not already holding files."""
    cwd = Path(cwd or os.getcwd())
    for k in range(1, 1000):
        path = cwd / (DEFAULT_OUTPUT if k == 1 else f"{DEFAULT_OUTPUT}-{k}")
        if not path.exists() or (path.is_dir() and not any(path.iterdir())):
            return path
    raise FileExistsError(f"{cwd}: {DEFAULT_OUTPUT}-1..999 all exist; pass output=DIR.")


def resolve_device(device: Optional[str]) -> str:
    """`device`, or cuda when torch sees one and cpu otherwise; a CUDA device on a machine without one is an error."""
    import torch

    from ._loading import check_device

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    check_device(device)
    return device


# ----- the steps -----

def make_world(root: Path, size: DemoSize) -> dict:
    """Training, validation and test scenes on disk with their VQA questions, and one new scene for the ONNX
    answer. Validation, test and the new scene are held out by content (`hf_llava.world.splits`): none shows
    what a pretraining scene (or the tower's near miss of one), a training or a prompt-example scene shows, nor
    what another split's scene shows. The split sizes do not change which scenes are held out: a run's test
    split is a prefix of the full run's."""
    from .world.questions import majority_answers, make_questions
    from .world.scenes import make_scenes, write_scenes
    from .world.splits import content, heldout_scenes, pretraining_contents, prompt_example_contents

    # a smaller count gives a prefix: the full run's training scenes are held out from --quick's splits too
    train_pool = make_scenes(max(FULL.train_scenes, QUICK.train_scenes), SEED, "train")
    train = train_pool[:size.train_scenes]
    seen = pretraining_contents() | {content(s) for s in train_pool}
    seen |= prompt_example_contents(DATAGEN_TYPES)
    test_pool = heldout_scenes(max(FULL.test_scenes, QUICK.test_scenes), SEED, "test", seen)
    val = heldout_scenes(size.val_scenes, SEED, "val", seen | {content(s) for s in test_pool})
    test = test_pool[:size.test_scenes]
    example = heldout_scenes(1, SEED, "example", seen | {content(s) for s in test_pool + val})[0]
    paths = {"train": write_scenes(train, root / "train", SEED, progress=True)}
    for name, scenes in (("val", val), ("test", test)):
        write_scenes(scenes, root / name, SEED, progress=True)
        questions = make_questions(scenes, SEED, {s.id: f"images/{s.id}.png" for s in scenes})
        paths[f"{name}_questions"] = root / name / "questions.jsonl"
        paths[f"{name}_questions"].write_text("".join(json.dumps(q) + "\n" for q in questions), encoding="utf-8")
    paths["questions"] = paths["test_questions"]
    # the test questions again, each in its type's wording that no training data uses (`UNSEEN_PHRASINGS`)
    unseen = make_questions(test, SEED, {s.id: f"images/{s.id}.png" for s in test}, phrasing="unseen")
    paths["unseen_questions"] = root / "test" / "questions_unseen_phrasing.jsonl"
    paths["unseen_questions"].write_text("".join(json.dumps(q) + "\n" for q in unseen), encoding="utf-8")
    paths["splits"] = {name: {"scenes": len(scenes), "by_shapes": _by_shapes(scenes)}
                       for name, scenes in (("train", train), ("val", val), ("test", test))}
    # the blind baseline's answers: each type's most common answer on the training scenes, never the test's
    paths["majority"] = majority_answers(make_questions(train, SEED, {s.id: "" for s in train}))
    paths["example_scene"] = example
    write_scenes([example], root / "example", SEED)
    paths["example"] = root / "example" / "images" / f"{example.id}.png"
    return paths


def _by_shapes(scenes) -> dict:
    """`{"2": 22, "3": 39, ...}`: how many scenes show each number of shapes."""
    counts = {}
    for scene in scenes:
        counts[str(len(scene.shapes))] = counts.get(str(len(scene.shapes)), 0) + 1
    return dict(sorted(counts.items()))


SPLITS_NOTE = ("Validation and test scenes are held out by content: none shows the set of (quadrant, size, colour, "
               "kind) of a pretraining, training or prompt-example scene. The pretraining scenes show every one-shape "
               "content, so both hold 2-4 shape scenes. The validation split exists for tuning; this run tunes "
               "nothing, and the test split is used only for this report.")


def caption_data(scenes_jsonl: Path, output: Path) -> Path:
    """Stage 1's data: each caption of each training picture as one sample (LLaVA's LCS-558K layout)."""
    samples = []
    with open(scenes_jsonl, encoding="utf-8") as f:
        for line in f:
            scene = json.loads(line)
            for k, caption in enumerate(scene["captions"]):
                samples.append({"id": f"{scene['id']}-caption{k}", "image": scene["image"], "conversations": [
                    {"from": "human", "value": f"<image>\n{STAGE1_INSTRUCTION}"}, {"from": "gpt", "value": caption}]})
    random.Random(SEED).shuffle(samples)
    output.write_text(json.dumps(samples), encoding="utf-8")
    return output


def _progress_callback(description: str):
    """Trainer's progress bar, named, with the loss beside it instead of a printed dict per log."""
    from transformers.trainer_callback import ProgressCallback

    class StageProgress(ProgressCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            super().on_train_begin(args, state, control, **kwargs)
            if self.training_bar is not None:
                self.training_bar.set_description(description)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.training_bar is not None and "loss" in (logs or {}):
                self.training_bar.set_postfix(loss=f"{logs['loss']:.3f}")

    return StageProgress()


def train_stage(stage: int, model, processor, data: Path, images: Path, output: Path, size: DemoSize,
                device: str, description: str) -> list[dict]:
    """One stage with its stage trainer (saved to `output`); returns its `[{step, loss}]` log."""
    from transformers.trainer_callback import ProgressCallback

    from .data import load_llava_dataset
    from .trainers import LlavaStage1Config, LlavaStage1Trainer, LlavaStage2Config, LlavaStage2Trainer

    config_class, trainer_class = ((LlavaStage1Config, LlavaStage1Trainer) if stage == 1
                                   else (LlavaStage2Config, LlavaStage2Trainer))
    config = config_class(
        output_dir=str(output), max_steps=size.stage1_steps if stage == 1 else size.stage2_steps,
        per_device_train_batch_size=size.batch_size,
        learning_rate=size.stage1_lr if stage == 1 else size.stage2_lr, logging_steps=5, logging_first_step=True,
        save_strategy="no", seed=SEED, use_cpu=device == "cpu", max_length=512, disable_tqdm=False,
    )
    dataset = load_llava_dataset(data, image_folder=images)
    trainer = trainer_class(model=model, args=config, train_dataset=dataset, processing_class=processor)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_progress_callback(description))
    trainer.train()
    return [{"step": e["step"], "loss": round(e["loss"], 4)} for e in trainer.state.log_history if "loss" in e]


def evaluate(model_dir: Path, questions: list[dict], unseen: list[dict], images: Path, device: str, name: str) -> dict:
    """VQA accuracy (percent) overall and per question type, each with its question count and 95% Wilson
    interval (`{"accuracy", "n", "interval", "per_type": {type: {...}}, "unseen_phrasing": {...}}`), with the
    evaluator `hf-llava eval vqa` uses; `unseen_phrasing` scores the `unseen` questions (the same ones in
    wordings the training data never uses) overall."""
    from .eval import evaluate_vqa, load_model
    from .eval.report import percent_with_interval

    model, processor = load_model(model_dir, device)
    print(f"VQA on held-out scenes: {name}")
    scores = evaluate_vqa(model, processor, questions, images, batch_size=32, max_new_tokens=8)
    unseen_scores = evaluate_vqa(model, processor, unseen, images, batch_size=32, max_new_tokens=8)
    return {**percent_with_interval(scores["accuracy"], scores["n"]),
            "per_type": {t: percent_with_interval(c["accuracy"], c["n"]) for t, c in scores["categories"].items()},
            "unseen_phrasing": {**percent_with_interval(unseen_scores["accuracy"], unseen_scores["n"]),
                                "per_type": {t: percent_with_interval(c["accuracy"], c["n"])
                                             for t, c in unseen_scores["categories"].items()}}}


def onnx_example(model_dir: Path, onnx_dir: Path, scene, image_path: Path, device: str) -> dict:
    """Export `model_dir` to ONNX and answer a question about a new scene with ONNX Runtime and with PyTorch."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    from .onnx import ORTLlavaForConditionalGeneration, export_onnx
    from .processing import LlavaProcessor
    from .world.questions import make_questions

    export_onnx(model_dir, onnx_dir)
    question = next(q for q in make_questions([scene], SEED, {scene.id: ""}) if q["type"] == "position")
    processor = LlavaProcessor.from_pretrained(onnx_dir)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question["question"]}]}],
        add_generation_prompt=True)
    inputs = processor(images=Image.open(image_path), text=prompt, return_tensors="pt")
    greedy = dict(max_new_tokens=16, do_sample=False)
    ort_tokens = ORTLlavaForConditionalGeneration.from_pretrained(onnx_dir).generate(**inputs, **greedy)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).to(device).eval()
    with torch.inference_mode():
        torch_tokens = model.generate(**inputs.to(device), **greedy).cpu()
    start = inputs["input_ids"].shape[1]
    return {"image": str(image_path), "question": question["question"], "expected": question["answer"],
            "answer": processor.decode(ort_tokens[0, start:], skip_special_tokens=True).strip(),
            "tokens": ort_tokens[0, start:].tolist(), "matches_pytorch": bool(torch.equal(ort_tokens, torch_tokens))}


def draw_loss_chart(curves: dict, path: Path, width: int = 720, height: int = 300) -> None:
    """`loss.png`: one panel per stage (its runs' loss against the step), drawn with PIL."""
    from PIL import Image, ImageDraw

    panels = {"stage 1 (projector, captions)": {k: v for k, v in curves.items() if k.startswith("stage 1")},
              "stage 2 (projector + LM, instructions)": {k: v for k, v in curves.items() if k.startswith("stage 2")}}
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44)]
    image = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(image)
    panel_width = width // len(panels)
    for p, (title, runs) in enumerate(panels.items()):
        left, top, right, bottom = p * panel_width + 50, 30, (p + 1) * panel_width - 15, height - 45
        points = [pt for run in runs.values() for pt in run]
        if not points:
            continue
        max_step = max(pt["step"] for pt in points) or 1
        max_loss = max(pt["loss"] for pt in points) * 1.05 or 1.0
        pen.rectangle((left, top, right, bottom), outline="black")
        pen.text((left, 8), title, fill="black")
        for k in range(5):  # y ticks
            value = max_loss * k / 4
            y = bottom - (bottom - top) * k / 4
            pen.line((left - 4, y, left, y), fill="black")
            pen.text((left - 40, y - 6), f"{value:.2f}", fill="black")
        pen.text((left, bottom + 6), "0", fill="black")
        pen.text((right - 30, bottom + 6), f"{max_step}", fill="black")
        pen.text(((left + right) // 2 - 12, bottom + 6), "step", fill="black")
        for r, (name, run) in enumerate(runs.items()):
            colour = colours[r % len(colours)]
            xy = [(left + (right - left) * pt["step"] / max_step, bottom - (bottom - top) * pt["loss"] / max_loss)
                  for pt in run]
            if len(xy) > 1:
                pen.line(xy, fill=colour, width=2)
            pen.text((right - 200, top + 6 + 14 * r), name, fill=colour)
    image.save(path)


def results_table(ablation: dict, baselines: dict) -> str:
    """Accuracy (percent, with its 95% Wilson interval) per question type for each ablation, overall, and overall
    on the same questions in unseen wordings, beside the blind majority-answer guesser and the chance line."""
    from .eval.report import format_interval, format_table
    from .world.questions import QUESTION_TYPES

    header = ["question type", *ABLATIONS.values(), "majority answer", "chance"]
    rows = [[t, *(format_interval(ablation[k]["per_type"].get(t)) for k in ABLATIONS),
             format_interval(baselines["majority"]["per_type"].get(t)), baselines["chance"]["per_type"].get(t)]
            for t in QUESTION_TYPES]
    rows.append(["overall", *(format_interval(ablation[k]) for k in ABLATIONS),
                 format_interval(baselines["majority"]), baselines["chance"]["accuracy"]])
    rows.append(["unseen phrasing", *(format_interval(ablation[k].get("unseen_phrasing")) for k in ABLATIONS),
                 format_interval(baselines["majority"]), baselines["chance"]["accuracy"]])  # the same answers
    return format_table(header, rows)


def baseline_lines(questions: list[dict], majority: dict) -> dict:
    """The blind guessers: uniform among each type's answers (`chance`, an expectation) and always the most
    common training answer of the type (`majority`, measured on `questions`, with its 95% interval)."""
    from .eval.report import percent_with_interval
    from .world.questions import QUESTION_TYPES, chance_accuracy, majority_accuracy

    def by_type(t: str) -> list[dict]:
        return [q for q in questions if q["type"] == t]

    chance = {"accuracy": round(100 * chance_accuracy(questions), 2),
              "per_type": {t: round(100 * chance_accuracy(by_type(t)), 2) for t in QUESTION_TYPES}}
    majority = {**percent_with_interval(100 * majority_accuracy(questions, majority), len(questions)),
                "answers": majority,
                "per_type": {t: percent_with_interval(100 * majority_accuracy(by_type(t), majority), len(by_type(t)))
                             for t in QUESTION_TYPES}}
    return {"chance": chance, "majority": majority}


def run_demo(output=None, *, quick: bool = False, device: Optional[str] = None, overwrite: bool = False) -> dict:
    """The whole demo into `output` (default: `default_output()`); returns the report (also `report.json`)."""
    from ._io import atomic_output, check_output_folder
    from ._extras import require
    from .trainers import require_training

    require_training("The demo's training steps")
    require("onnxruntime", "onnx", "The demo's ONNX step")
    device = resolve_device(device)
    output = check_output_folder(output if output is not None else default_output(), overwrite)
    size = QUICK if quick else FULL
    print(f"hf-llava demo{' --quick' if quick else ''}: writing {output} (device {device})")

    import torch
    from transformers import AutoProcessor

    from ._loading import load_llava_model
    from .builder import from_vision_and_text
    from .datagen import generate
    from .world.parts import language_model_path, vision_tower_path
    from .world.teacher import WorldTeacher

    seconds, losses = {}, {}
    start = clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        seconds[step] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()

    def fresh_llava():  # the recipe's start: pretrained tower and LM, a random projector (seeded)
        torch.manual_seed(SEED)
        return from_vision_and_text(vision_tower_path(), language_model_path())

    with atomic_output(output, overwrite, what="output folder", tag="running") as tmp:
        world = make_world(tmp / "world", size)
        train_images, test_images = tmp / "world" / "train", tmp / "world" / "test"
        lap("world")
        (tmp / "data").mkdir()
        datagen = generate(WorldTeacher(seed=SEED), tmp / "data" / "instruct.json", input=str(world["train"]),
                           types=DATAGEN_TYPES, seed=SEED)
        captions = caption_data(world["train"], tmp / "data" / "captions.json")
        lap("datagen")
        model, processor = fresh_llava()
        losses["stage 1"] = train_stage(1, model, processor, captions, train_images, tmp / "stage1", size, device,
                                        "stage 1: projector on captions")
        lap("stage1")
        model = load_llava_model(tmp / "stage1")
        processor = AutoProcessor.from_pretrained(tmp / "stage1")
        losses["stage 2 (c) after stage 1"] = train_stage(
            2, model, processor, datagen.output, train_images, tmp / "stage2", size, device,
            "stage 2: projector + LM on instructions")
        lap("stage2")
        model, processor = fresh_llava()
        losses["stage 2 (b) without stage 1"] = train_stage(
            2, model, processor, datagen.output, train_images, tmp / "ablation" / "stage2_only", size, device,
            "ablation: stage 2 without stage 1")
        lap("stage2_only")
        questions = [json.loads(line) for line in world["questions"].read_text(encoding="utf-8").splitlines()]
        unseen = [json.loads(line) for line in world["unseen_questions"].read_text(encoding="utf-8").splitlines()]
        models = {"stage1_only": tmp / "stage1", "stage2_only": tmp / "ablation" / "stage2_only",
                  "stage1_stage2": tmp / "stage2"}
        ablation = {k: evaluate(path, questions, unseen, test_images, device, ABLATIONS[k])
                    for k, path in models.items()}
        lap("eval")
        example = onnx_example(tmp / "stage2", tmp / "onnx", world["example_scene"], world["example"], device)
        example["image"] = str(output / Path(example["image"]).relative_to(tmp))
        lap("onnx")
        draw_loss_chart(losses, tmp / "loss.png")
        baselines = baseline_lines(questions, world["majority"])
        seconds["total"] = round(time.perf_counter() - start, 1)
        report = {
            "ablation": ablation, "chance": baselines["chance"]["accuracy"],
            "chance_per_type": baselines["chance"]["per_type"], "majority_answer": baselines["majority"],
            "interval": "95% Wilson score interval, in percent", "onnx": example, "seconds": seconds,
            "questions": len(questions), "splits": {**world["splits"], "note": SPLITS_NOTE},
            "device": device, "quick": quick, "sizes": asdict(size),
            "data": {"stage1_captions": len(json.loads(captions.read_text())), "instructions": datagen.samples,
                     "by_type": {k: c.generated for k, c in datagen.counts.items()}},
            "loss": losses,
        }
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print_summary(report, output)
    return report


def print_summary(report: dict, output: Path) -> None:
    baselines = {"chance": {"accuracy": report["chance"], "per_type": report["chance_per_type"]},
                 "majority": report["majority_answer"]}
    tested = report["splits"]["test"]
    print(f"\nVQA accuracy (%) on {tested['scenes']} test scenes held out by content (shapes per scene: "
          f"{', '.join(f'{k}: {v}' for k, v in tested['by_shapes'].items())}), [95% Wilson interval]:")
    print(results_table(report["ablation"], baselines))
    print(report["splits"]["note"])
    example = report["onnx"]
    print(f"\nA new scene, answered by ONNX Runtime: {example['image']}")
    print(f"  Q: {example['question']}")
    print(f"  A: {example['answer']}   (right answer: {example['expected']})")
    print(f"  ONNX Runtime's greedy tokens {'equal' if example['matches_pytorch'] else 'DIFFER FROM'} PyTorch's.")
    steps = ", ".join(f"{k} {v:.0f}s" for k, v in report["seconds"].items())
    print(f"\nTime: {steps}.\nEverything is in {output} (report.json, loss.png, checkpoints, onnx/, data).")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default=None, metavar="DIR",
                        help=f"folder to write (default: ./{DEFAULT_OUTPUT}, or -2, -3... if that one holds files)")
    parser.add_argument("--quick", action="store_true", help="smaller numbers, same steps (under 3 minutes on CPU)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="where to train and evaluate (default: cuda when available)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output (once the run is done)")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_demo(args.output, quick=args.quick, device=args.device, overwrite=args.overwrite)
    return 0
