"""CPU benchmark: PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime int8 on a ~50M-parameter LLaVA.

Builds a random model with `hf_llava.tiny.build_llava`, exports it with `hf_llava.onnx.export_onnx`
(fp32 + int8), then measures, for one image prompt (batch 1):
  prefill latency: prompt -> first-step logits (vision tower + projector + embeddings + decoder);
  decode tokens/s: (N - 1) / (time to generate N tokens - time to generate 1 token), greedy, EOS suppressed.
Warm-up once, median of `--repeats` (each repeat times 1 and N tokens back
to back). Writes `benchmarks/reports/onnx.json` and prints the ratios.
Targets on CPU: ORT fp32 >= 1.5x PyTorch decode, ORT int8 >= 2.5x.

    python benchmarks/bench_onnx.py [--threads 2] [--new-tokens 64] [--repeats 5]
"""

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import onnxruntime as ort
import torch

from hf_llava import tiny
from hf_llava.onnx import ORTLlavaForConditionalGeneration, export_onnx

TARGETS = {"ort_fp32": 1.5, "ort_int8": 2.5}


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _measure(name: str, prefill, generate, new_tokens: int, repeats: int) -> dict:
    prefill_s = _median_seconds(prefill, repeats)
    generate(new_tokens)  # warm-up
    rates = []
    for _ in range(repeats):  # 1 and N tokens back to back, so both see the same machine load
        start = time.perf_counter()
        generate(1)
        one = time.perf_counter() - start
        start = time.perf_counter()
        generate(new_tokens)
        many = time.perf_counter() - start
        rates.append((new_tokens - 1) / max(many - one, 1e-9))
    result = {"prefill_ms": 1000 * prefill_s, "decode_tokens_per_s": statistics.median(rates)}
    print(f"{name:>10}: prefill {result['prefill_ms']:8.1f} ms, decode {result['decode_tokens_per_s']:8.1f} tokens/s")
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--num-layers", type=int, default=10)
    parser.add_argument("--vision-hidden-size", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for both PyTorch and ONNX Runtime")
    parser.add_argument("--report", default=str(Path(__file__).parent / "reports" / "onnx.json"))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)

    model, processor = tiny.build_llava(
        hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=8,
        vision_hidden_size=args.vision_hidden_size,
        vision_layers=6, image_size=112, patch_size=14,
    )
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e6:.1f}M parameters, {model.config.num_image_tokens} image tokens, "
          f"{args.threads} threads")
    prompt = "USER: <image>\nWhat is shown in the image? Describe it in detail. ASSISTANT:"
    inputs = processor(images=[tiny.demo_image(128)], text=[prompt], return_tensors="pt")
    gen = dict(do_sample=False, pad_token_id=model.config.text_config.pad_token_id)

    results = {}
    with torch.inference_mode():
        results["pytorch"] = _measure(
            "pytorch", lambda: model(**inputs, use_cache=True),
            lambda n: model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, **gen),
            args.new_tokens, args.repeats,
        )
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(f"{tmp}/model")
        processor.save_pretrained(f"{tmp}/model")
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        out = export_onnx(f"{tmp}/model", f"{tmp}/onnx", dtype="int8", show_progress=False)  # fp32 + int8
        for dtype in ("fp32", "int8"):
            ort_model = ORTLlavaForConditionalGeneration.from_pretrained(out, dtype=dtype, session_options=options)
            results[f"ort_{dtype}"] = _measure(
                f"ort {dtype}", lambda ort_model=ort_model: ort_model.first_step_logits(**inputs),
                lambda n, ort_model=ort_model: ort_model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, **gen),
                args.new_tokens, args.repeats,
            )
    base = results["pytorch"]
    ratios = {
        name: {
            "decode_speedup": r["decode_tokens_per_s"] / base["decode_tokens_per_s"],
            "prefill_speedup": base["prefill_ms"] / r["prefill_ms"],
            "decode_target": TARGETS[name],
        }
        for name, r in results.items() if name != "pytorch"
    }
    for name, r in ratios.items():
        status = "meets" if r["decode_speedup"] >= r["decode_target"] else "BELOW"
        print(f"{name}: decode {r['decode_speedup']:.2f}x PyTorch ({status} target {r['decode_target']}x), "
              f"prefill {r['prefill_speedup']:.2f}x")
    report = {
        "model_parameters": params, "threads": args.threads, "new_tokens": args.new_tokens,
        "prompt_tokens": int(inputs["input_ids"].shape[1]), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "onnxruntime": ort.__version__, "results": results, "ratios": ratios,
    }
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    print(f"report written to {args.report}")
    return report


if __name__ == "__main__":
    main()
