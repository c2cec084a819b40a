"""What quantisation costs in answers: VQA accuracy of the trained demo model through ONNX Runtime, fp32 / int8 / int4.

The shipped chat model (`world/pretrained/chat_model`: the demo's stage 1 + stage 2, trained on the demo's training
scenes only) is exported with each `--optimize` decoder this install can make and each variant, then asked the
demo's held-out test questions (scenes no training or tuning step saw) with the evaluator `hf-llava eval vqa` uses
(`evaluate_vqa`, greedy, short-answer prompt). Each accuracy carries its 95% Wilson interval; `same_as_fp32` is the
share of answers identical to that decoder's fp32 answers. A difference is claimed only outside the intervals.
Writes `benchmarks/reports/onnx_quality.json`.

    python benchmarks/bench_onnx_quality.py [--threads 2]
"""

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import onnxruntime as ort
import torch
import transformers

from hf_llava.demo import FULL, make_world
from hf_llava.eval import evaluate_vqa, load_model
from hf_llava.eval.report import percent_with_interval
from hf_llava.onnx import ORTLlavaForConditionalGeneration, export_onnx
from hf_llava.onnx.builder import unavailable_reason
from hf_llava._io import read_jsonl
from hf_llava.world.parts import chat_model_path


def score(model, processor, questions, images) -> dict:
    result = evaluate_vqa(model, processor, questions, images, batch_size=32, max_new_tokens=8, progress=False)
    answers = {r["question_id"]: r["prediction"] for r in result["results"]}
    return {**percent_with_interval(result["accuracy"], result["n"]), "answers": answers}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for PyTorch and ONNX Runtime")
    parser.add_argument("--report", default=str(Path(__file__).parent / "reports" / "onnx_quality.json"))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    start = time.perf_counter()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        world = make_world(tmp / "world", FULL)
        questions = [record for _, record in read_jsonl(world["questions"], "questions")]
        images = tmp / "world" / "test"
        model, processor = load_model(chat_model_path(), "cpu")
        rows["pytorch_fp32"] = score(model, processor, questions, images)
        decoders = ["none"] + ([] if unavailable_reason(model.config.text_config) else ["gqa"])
        for decoder in decoders:
            label = "gqa" if decoder == "gqa" else "traced"
            for variant in ("int8", "int4"):  # each export writes fp32 beside its variant
                out = export_onnx(chat_model_path(), tmp / f"{decoder}-{variant}", dtype=variant, optimize=decoder,
                                  show_progress=False)
                for dtype in (("fp32", variant) if variant == "int8" else (variant,)):
                    ort_model = ORTLlavaForConditionalGeneration.from_pretrained(out, dtype=dtype,
                                                                               session_options=options)
                    rows[f"ort_{label}_{dtype}"] = score(ort_model, processor, questions, images)
            reference = rows[f"ort_{label}_fp32"]["answers"]
            for dtype in ("fp32", "int8", "int4"):
                answers = rows[f"ort_{label}_{dtype}"]["answers"]
                rows[f"ort_{label}_{dtype}"]["same_as_fp32"] = round(
                    sum(answers[q] == reference[q] for q in reference) / len(reference), 4)
    for name, row in rows.items():
        same = f", {100 * row['same_as_fp32']:.1f}% of answers as fp32" if "same_as_fp32" in row else ""
        print(f"{name:>16}: VQA {row['accuracy']}% {row['interval']} (n={row['n']}){same}")
    report = {
        "model": "world/pretrained/chat_model (the demo's stage 1 + stage 2)",
        "questions": f"the demo's held-out test scenes ({FULL.test_scenes} scenes)",
        "threads": args.threads, "seconds": round(time.perf_counter() - start),
        "torch": torch.__version__, "transformers": transformers.__version__, "onnxruntime": ort.__version__,
        "results": {name: {k: v for k, v in row.items() if k != "answers"} for name, row in rows.items()},
    }
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    print(f"report written to {args.report}")
    return report


if __name__ == "__main__":
    main()
