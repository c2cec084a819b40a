"""QLoRA against full stage 2 on the demo: VQA accuracy on the held-out test scenes, with 95% intervals.

The demo's world, data and stage 1 (`hf_llava.demo`'s functions, imported), then three stage 2 runs from the same
stage-1 model, the same data, steps, batch and seed:
- full: projector + language model (the demo's stage 2, `demo.train_stage`);
- qlora: `hf-llava train stage2 --lora --load-in 4bit` (the command itself): LoRA on the LM loaded in 4-bit NF4
  with double quantisation, the QLoRA recipe's rank and alpha, gradient checkpointing, the projector in float32;
- lora: the same command without `--load-in` and with the same rank, alpha and rate, so that what quantisation
  changes is told apart from what LoRA changes.
Every run uses the demo's stage-2 learning rate (the recipe's 2e-5 is for a 7B LM at batch 128; the demo raises
full stage 2's to 1e-3, and the LoRA runs take the same). The LoRA runs are scored merged into the full-precision
base (what `--merge-lora` writes), and the QLoRA one also loaded back in 4-bit (`--load-in 4bit` at inference).
Accuracy is the demo's VQA scorer with 95% Wilson intervals; a difference is only claimed outside them.

    OMP_NUM_THREADS=1 python benchmarks/bench_qlora.py            # the full demo's sizes (2 CPU cores: ~30 min)
    python benchmarks/bench_qlora.py --size quick                 # the demo's --quick sizes, 100 test scenes
writes benchmarks/reports/qlora.json.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

REPORT = Path(__file__).resolve().parent / "reports" / "qlora.json"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def score(model, processor, questions: list[dict], images: Path) -> dict:
    """VQA accuracy overall and per question type, in percent with 95% Wilson intervals."""
    from hf_llava.eval import evaluate_vqa
    from hf_llava.eval.report import percent_with_interval

    scores = evaluate_vqa(model, processor, questions, images, batch_size=32, max_new_tokens=8, progress=False)
    return {**percent_with_interval(scores["accuracy"], scores["n"]),
            "per_type": {t: percent_with_interval(c["accuracy"], c["n"]) for t, c in scores["categories"].items()}}


def train_lora(stage1: Path, output: Path, data: Path, images: Path, size, *extra: str) -> float:
    """`hf-llava train stage2 --lora ...` from the stage-1 model at the demo's sizes; returns the wall time."""
    from hf_llava import cli
    from hf_llava.demo import SEED

    start = time.perf_counter()
    code = cli.main(["train", "stage2", "--model", str(stage1), "--data", str(data), "--images", str(images),
                     "--output", str(output), "--lora", "--merge-lora", "--max-steps", str(size.stage2_steps),
                     "--batch-size", str(size.batch_size), "--lr", str(size.stage2_lr), "--max-length", "512",
                     "--seed", str(SEED), "--save-steps", str(10 * size.stage2_steps), "--logging-steps", "5",
                     *extra])
    if code != 0:
        raise RuntimeError(f"hf-llava train stage2 {' '.join(extra)} exited with {code}")
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=("quick", "full"), default="full",
                        help="the demo's QUICK or FULL sizes (training scenes, steps); the test split is the full "
                             "run's 100 scenes either way")
    parser.add_argument("--output", default=str(REPORT), help="the report JSON")
    args = parser.parse_args(argv)

    import torch
    import transformers
    from transformers import AutoProcessor

    from hf_llava._loading import bitsandbytes_config, load_llava_model, load_quantized
    from hf_llava.builder import from_vision_and_text
    from hf_llava.datagen import generate
    from hf_llava.demo import DATAGEN_TYPES, FULL, QUICK, SEED, caption_data, make_world, train_stage
    from hf_llava.trainers.recipe import QLORA
    from hf_llava.world.parts import language_model_path, vision_tower_path
    from hf_llava.world.teacher import WorldTeacher

    size = replace(QUICK if args.size == "quick" else FULL, test_scenes=FULL.test_scenes)
    seconds: dict = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-qlora-") as work:
        work = Path(work)
        world = make_world(work / "world", size)
        train_images, test_images = work / "world" / "train", work / "world" / "test"
        (work / "data").mkdir()
        instruct = generate(WorldTeacher(seed=SEED), work / "data" / "instruct.json", input=str(world["train"]),
                            types=DATAGEN_TYPES, seed=SEED).output
        captions = caption_data(world["train"], work / "data" / "captions.json")
        questions = read_jsonl(world["questions"])

        clock = time.perf_counter()
        torch.manual_seed(SEED)
        model, processor = from_vision_and_text(vision_tower_path(), language_model_path())
        train_stage(1, model, processor, captions, train_images, work / "stage1", size, "cpu", "stage 1")
        seconds["stage1"] = round(time.perf_counter() - clock, 1)

        clock = time.perf_counter()
        train_stage(2, load_llava_model(work / "stage1"), AutoProcessor.from_pretrained(work / "stage1"), instruct,
                    train_images, work / "full", size, "cpu", "stage 2: full")
        seconds["stage2_full"] = round(time.perf_counter() - clock, 1)
        seconds["stage2_qlora"] = round(train_lora(work / "stage1", work / "qlora", instruct, train_images, size,
                                                   "--load-in", "4bit"), 1)
        rank = ["--lora-r", str(QLORA["r"]), "--lora-alpha", str(QLORA["lora_alpha"])]
        seconds["stage2_lora"] = round(train_lora(work / "stage1", work / "lora", instruct, train_images, size,
                                                  *rank), 1)

        clock = time.perf_counter()
        results = {}
        for name, folder in (("full", work / "full"), ("qlora_merged", work / "qlora" / "merged"),
                             ("lora_merged", work / "lora" / "merged")):
            results[name] = score(load_llava_model(folder).eval(), AutoProcessor.from_pretrained(folder), questions,
                                  test_images)
        model, processor = load_quantized(work / "qlora" / "merged", bitsandbytes_config(4), device="cpu")
        results["qlora_merged_loaded_in_4bit"] = score(model, processor, questions, test_images)
        seconds["eval"] = round(time.perf_counter() - clock, 1)
    seconds["total"] = round(time.perf_counter() - start, 1)

    report = {
        "benchmark": "qlora",
        "model": "the demo's LLaVA (shipped CLIP-style tower and 3-layer Llama, mlp2x_gelu projector), stage 1 then "
                 "stage 2 three ways from the same stage-1 model",
        "size": args.size, "sizes": asdict(size),
        "steps": {"stage1": size.stage1_steps, "stage2": size.stage2_steps, "batch_size": size.batch_size},
        "stage2": {
            "full": {"learning_rate": size.stage2_lr, "trains": "projector + language model"},
            "qlora": {"command": "hf-llava train stage2 --lora --load-in 4bit --merge-lora", "bits": 4,
                      "quant_type": "nf4", "double_quant": True, "r": QLORA["r"], "lora_alpha": QLORA["lora_alpha"],
                      "learning_rate": size.stage2_lr, "gradient_checkpointing": QLORA["gradient_checkpointing"]},
            "lora": {"command": "hf-llava train stage2 --lora --merge-lora", "r": QLORA["r"],
                     "lora_alpha": QLORA["lora_alpha"], "learning_rate": size.stage2_lr},
        },
        "vqa": results,
        "questions": len(questions),
        "interval": "95% Wilson score interval, in percent",
        "seconds": seconds,
        "environment": {"device": "cpu", "threads": torch.get_num_threads(),
                        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch": torch.__version__,
                        "transformers": transformers.__version__, "python": platform.python_version()},
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    for name, result in results.items():
        print(f"{name:>28}: {result['accuracy']}% {result['interval']} (n={result['n']})")
    print(f"seconds: {seconds}; report: {args.output}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
