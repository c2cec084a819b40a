"""Train the chat model shipped with the package: the demo's stage 1 + stage 2 LLaVA, its (c) model.

The same world, data, sizes and stage trainers as a full `hf-llava demo` run (`hf_llava.demo.FULL`, its
functions imported, not copied): stage 1 trains the projector on the captions, stage 2 the projector and the LM on
the offline teacher's instructions, from the shipped vision tower and LM. The model and its processor are saved
into `src/hf_llava/world/pretrained/chat_model/` (no optimizer state or checkpoints, and no module copies for
`trust_remote_code`: the folder loads after `import hf_llava`), which is replaced only once everything succeeded,
with `training.json`: the settings, and the model's VQA accuracy on the demo's held-out test scenes with the demo's
evaluator, which the script also prints. `hf-llava serve` and `hf-llava chat` use that folder when no model is
named.

Seeded and deterministic on a given machine, torch build and transformers line, on the CPU (the same training as
the demo's, which takes a few minutes on 2 idle CPU cores). Run from the repository root:

    OMP_NUM_THREADS=2 python scripts/train_chat_model.py
    python scripts/train_chat_model.py --output /tmp/chat_model
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import AutoProcessor

from hf_llava._io import atomic_folder
from hf_llava._loading import load_llava_model
from hf_llava.builder import from_vision_and_text
from hf_llava.datagen import generate
from hf_llava.demo import DATAGEN_TYPES, FULL, SEED, caption_data, evaluate, make_world, train_stage
from hf_llava.processing.processing_llava import strip_json_fields
from hf_llava.world.parts import (TRAINING_FILE, chat_model_path, example_images, language_model_path,
                                  vision_tower_path)
from hf_llava.world.teacher import WorldTeacher

DEVICE = "cpu"
EXAMPLES = 3  # the chat page's example pictures, answered at the end as a check


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output", default=chat_model_path(), help="the chat model's folder (replaced)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser.parse_args(argv)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def without_module_copies(folder: Path) -> None:
    """The folder ships inside hf-llava and loads after `import hf_llava`: no `auto_map` and no copies of the
    package's module files for `trust_remote_code` loading (they would go stale beside the package's own)."""
    for module in folder.glob("*.py"):
        module.unlink()
    strip_json_fields([p for p in folder.glob("*.json") if p.name != "tokenizer.json"], ("auto_map",))


def check_examples(settings: dict, test_images: Path) -> None:
    """`example_images()` must draw the demo's first test scenes, pixel for pixel (it rebuilds the held-out split
    from the settings in `training.json`, the demo's `make_world` from its own)."""
    for example in example_images(EXAMPLES, settings):
        written = np.asarray(Image.open(test_images / "images" / f"{example.scene.id}.png").convert("RGB"))
        if not np.array_equal(np.asarray(example.image), written):
            raise RuntimeError(f"example_images() drew {example.scene.id} unlike the demo's test split; "
                               "world.parts.example_images and demo.make_world disagree on the held-out scenes.")


def chat_reply(model, processor, image, question: str) -> str:
    """One chat turn as a user types it (the question alone, no short-answer instruction), answered greedily."""
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
        add_generation_prompt=True)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    with torch.inference_mode():
        tokens = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    return processor.decode(tokens[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def answer_examples(model_dir: Path, settings: dict) -> list[dict]:
    """The chat page's example questions (`example_images`), each asked about its picture."""
    model = load_llava_model(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    return [{"scene": e.scene.id, "question": e.question, "expected": e.answer,
             "reply": chat_reply(model, processor, e.image, e.question)} for e in example_images(EXAMPLES, settings)]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    size = FULL
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="chat-model-") as work, atomic_folder(args.output) as staging:
        work = Path(work)
        world = make_world(work / "world", size)
        train_images, test_images = work / "world" / "train", work / "world" / "test"
        (work / "data").mkdir()
        datagen = generate(WorldTeacher(seed=SEED), work / "data" / "instruct.json", input=str(world["train"]),
                           types=DATAGEN_TYPES, seed=SEED)
        captions = caption_data(world["train"], work / "data" / "captions.json")

        torch.manual_seed(SEED)  # the recipe's start, as the demo's: pretrained tower and LM, a seeded projector
        model, processor = from_vision_and_text(vision_tower_path(), language_model_path())
        losses = {"stage 1": train_stage(1, model, processor, captions, train_images, work / "stage1", size, DEVICE,
                                         "stage 1: projector on captions")}
        model = load_llava_model(work / "stage1")
        processor = AutoProcessor.from_pretrained(work / "stage1")
        losses["stage 2"] = train_stage(2, model, processor, datagen.output, train_images, work / "stage2", size,
                                        DEVICE, "stage 2: projector + LM on instructions")
        trained = time.perf_counter() - start

        model = load_llava_model(work / "stage2")  # what the demo evaluates, saved without the trainer's files
        model.save_pretrained(staging)
        AutoProcessor.from_pretrained(work / "stage2").save_pretrained(staging)
        without_module_copies(staging)
        vqa = evaluate(staging, read_jsonl(world["questions"]), read_jsonl(world["unseen_questions"]), test_images,
                       DEVICE, "the chat model (stage 1 + stage 2)")
        settings = {**asdict(size), "seed": SEED, "datagen_types": list(DATAGEN_TYPES),
                    "stage1_captions": len(json.loads(captions.read_text(encoding="utf-8"))),
                    "instructions": datagen.samples}
        check_examples(settings, test_images)
        examples = answer_examples(staging, settings)
        record = {
            "model": "the demo's (c) stage 1 + stage 2 model, trained by scripts/train_chat_model.py",
            "settings": settings,
            "environment": {"device": DEVICE, "threads": torch.get_num_threads(), "torch": torch.__version__,
                            "transformers": transformers.__version__, "python": platform.python_version()},
            "vqa": {**vqa, "scenes": world["splits"]["test"]["scenes"],
                    "note": "VQA accuracy (percent, 95% Wilson interval) on the demo's held-out test scenes, "
                            "asked with the short-answer instruction; unseen_phrasing: the same questions in "
                            "wordings no training text uses."},
            "final_loss": {stage: log[-1]["loss"] for stage, log in losses.items()},
            "examples": examples,  # example_images()' questions asked as a chat turn, greedy
            "seconds": {"training": round(trained), "total": round(time.perf_counter() - start)},
        }
        (staging / TRAINING_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    size_mb = sum(f.stat().st_size for f in Path(args.output).iterdir()) / 2**20
    print(f"\nwrote {args.output} ({size_mb:.1f} MB) in {record['seconds']['total']} s "
          f"(training {record['seconds']['training']} s)")
    print(f"VQA accuracy on {record['vqa']['scenes']} held-out test scenes ({vqa['n']} questions): "
          f"{vqa['accuracy']}% {vqa['interval']}; unseen phrasing {vqa['unseen_phrasing']['accuracy']}%")
    print("per type: " + ", ".join(f"{t} {s['accuracy']}%" for t, s in vqa["per_type"].items()))
    for row in examples:
        print(f"  {row['scene']}: {row['question']} -> {row['reply']!r} (right answer: {row['expected']})")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
