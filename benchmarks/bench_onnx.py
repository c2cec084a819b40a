"""Decoding against the memory roofline: PyTorch eager vs ONNX Runtime's decoders on a ~50M-parameter LLaVA.

A decoding step reads every weight of the LM once, so its floor is (bytes read per token) / (read bandwidth).
The bandwidth is measured in the same run as the best of 9 matrix-vector products (`torch.mv`, `--threads` threads;
on CUDA, on the GPU) over an fp32 matrix: of 1 GiB (memory: the roofline the targets use), and of the variant's own
bytes per token (a stricter roofline where the weights fit the cache, which reads them faster). For each variant:
  prefill: time to the first token of one image prompt (batch 1), through `generate(max_new_tokens=1)`;
  decode tokens/s: (N - 1) / (time to generate N tokens - time to generate 1), greedy, EOS suppressed;
  each the median of `--repeats` timings, in each of `--rounds` rounds over all variants (reported: each
  variant's median over the rounds and its range, since this machine's speed drifts by several percent);
  bytes per token: the decoder graph's weights (its initializers: int8 / int4 counted at their packed size, the
  GQA graph's rotary tables left out) + the KV cache read at the mean context; the embedding row is negligible;
  roofline: bandwidth / bytes per token, and the measured rate as a percentage of it (memory; same-size read).
Variants: PyTorch eager; ONNX Runtime with the traced decoder (`--optimize none`, the transformers.js layout) in fp32 /
int8 / int4, the traced fp32 decoder through onnxruntime's transformer optimizer (what it fuses is reported), and
the GroupQueryAttention decoder of onnxruntime-genai's model builder (`--optimize gqa`, the default export where it
can be made: transformers 5.x) in fp32 / int8 / int4. Writes `benchmarks/reports/onnx.json`.
Targets on CPU for the default export: fp32 >= 75% of its roofline, int8 >= 50%, prefill >= 2x PyTorch.

    python benchmarks/bench_onnx.py [--threads 2] [--new-tokens 64] [--repeats 5]
    python benchmarks/bench_onnx.py --device cuda --preset 7b   # fp16, IOBinding, a 7B-shaped LM (random weights)
"""

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
import transformers
from onnx import numpy_helper

from hf_llava import tiny
from hf_llava.onnx import ORTLlavaForConditionalGeneration, export_onnx
from hf_llava.onnx.builder import unavailable_reason
from hf_llava.onnx.layout import kv_shape, onnx_file

TARGETS = {"roofline_fp32": 0.75, "roofline_int8": 0.50, "prefill_speedup": 2.0}
PRESETS = {  # LM shapes; the vision tower stays small (decoding never runs it)
    "bench": dict(hidden_size=512, num_layers=10, num_heads=8),
    "7b": dict(hidden_size=4096, num_layers=32, num_heads=32, intermediate_size=11008),
}


def read_bandwidth(nbytes: float, device: str, repeats: int = 9) -> float:
    """Bytes per second of the best matrix-vector product over an fp32 matrix of `nbytes` (read once per product,
    as a decoding step reads its weights)."""
    side = int((nbytes / 4) ** 0.5)
    matrix, vector = torch.randn(side, side, device=device), torch.randn(side, device=device)
    best = float("inf")
    for _ in range(repeats + 1):  # the first one warms the caches, as the warm-up generation does
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mv(matrix, vector).sum().item()
        best = min(best, time.perf_counter() - start)
    return side * side * 4 / best


def graph_weight_bytes(path: Path) -> int:
    """Bytes of a graph's initializers (the weights a decoding step reads), rotary tables aside."""
    model = onnx.load(str(path))
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer
               if not t.name.endswith(("cos_cache", "sin_cache")))


def timed(model, inputs: dict, new_tokens: int, repeats: int, gen: dict, sync) -> dict:
    def run(n):
        sync()
        start = time.perf_counter()
        model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, **gen)
        sync()
        return time.perf_counter() - start

    run(new_tokens)  # warm-up
    ones, rates = [], []
    for _ in range(repeats):  # 1 and N tokens back to back, so both see the same machine load
        one, many = run(1), run(new_tokens)
        ones.append(one)
        rates.append((new_tokens - 1) / max(many - one, 1e-9))
    return {"prefill_ms": 1000 * statistics.median(ones), "decode_tokens_per_s": statistics.median(rates)}


def fused_copy(folder: Path, target: Path, num_heads: int, hidden_size: int) -> dict:
    """`folder` with its traced fp32 decoder run through onnxruntime's transformer optimizer -> the fused ops."""
    from onnxruntime.transformers.optimizer import optimize_model

    shutil.copytree(folder, target)
    decoder = target / onnx_file("fp32", "decoder_model_merged")
    optimized = optimize_model(str(decoder), model_type="gpt2", num_heads=num_heads, hidden_size=hidden_size,
                               opt_level=0)
    optimized.save_model_to_file(str(decoder))
    return {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="bench", help="LM shape (default: bench, 47.8M)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cpu: fp32 / int8 / int4; cuda: fp16 with IOBinding (needs onnxruntime-gpu)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timings per variant per round (their median)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds over all variants; the report gives each variant's median and range")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for PyTorch and ONNX Runtime")
    parser.add_argument("--report", default=str(Path(__file__).parent / "reports" / "onnx.json"))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"

    model, processor = tiny.build_llava(**PRESETS[args.preset], vision_hidden_size=256, vision_layers=6,
                                        image_size=112, patch_size=14)
    text = model.config.text_config
    params = sum(p.numel() for p in model.parameters())
    dram = read_bandwidth(2**30, args.device)
    print(f"model: {params / 1e6:.1f}M parameters, {model.config.num_image_tokens} image tokens, {args.threads} "
          f"threads; {args.device} read bandwidth {dram / 1e9:.1f} GB/s (1 GiB working set)")
    prompt = "USER: <image>\nWhat is shown in the image? Describe it in detail. ASSISTANT:"
    inputs = processor(images=[tiny.demo_image(128)], text=[prompt], return_tensors="pt")
    prompt_tokens = int(inputs["input_ids"].shape[1])
    gen = dict(do_sample=False, pad_token_id=text.pad_token_id)
    heads, head_dim = kv_shape(text)
    mean_context = prompt_tokens + args.new_tokens / 2

    def kv_bytes(itemsize: int) -> float:
        return 2 * text.num_hidden_layers * heads * head_dim * mean_context * itemsize

    lm_weights = sum(p.numel() for n, p in model.named_parameters()
                     if n.startswith(("model.language_model.", "lm_head.")) and "embed_tokens" not in n)
    dtype = torch.float16 if cuda else torch.float32
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    provider = "CUDAExecutionProvider" if cuda else "CPUExecutionProvider"
    gqa_reason = unavailable_reason(text)
    fused_ops = {}
    # name -> (model, inputs, sync, weight bytes, bytes per cache element, extra fields)
    variants = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model.save_pretrained(tmp / "model")
        processor.save_pretrained(tmp / "model")
        for decoder in ["none"] + ([] if gqa_reason else ["gqa"]):
            folders = {}
            for variant in (("fp16",) if cuda else ("int8", "int4")):  # each export writes fp32 too
                folders[variant] = export_onnx(tmp / "model", tmp / f"{decoder}-{variant}", dtype=variant,
                                               optimize=decoder, show_progress=False)
            runs = [(v, folders[v]) for v in folders]
            if not cuda:
                runs.insert(0, ("fp32", folders["int8"]))
            if decoder == "none" and not cuda:
                fused_ops = fused_copy(folders["int8"], tmp / "fused", text.num_attention_heads, text.hidden_size)
                runs.insert(1, ("fp32_fused", tmp / "fused"))
            for variant, folder in runs:
                dtype_name = variant.split("_")[0]
                ort_model = ORTLlavaForConditionalGeneration.from_pretrained(
                    folder, dtype=dtype_name, provider=provider, session_options=options)
                weights = graph_weight_bytes(folder / onnx_file(dtype_name, "decoder_model_merged"))
                label = "gqa" if decoder == "gqa" else "traced"
                itemsize = 2 if dtype_name == "fp16" else 4
                variants[f"ort_{label}_{variant}"] = (ort_model, inputs, lambda: None, weights, itemsize,
                                                      {"provider": ort_model.provider})
    torch_model = model.to(args.device, dtype)
    torch_inputs = {k: (v.to(args.device, dtype) if v.is_floating_point() else v.to(args.device))
                    for k, v in inputs.items()}
    variants = {"pytorch": (torch_model, torch_inputs, sync, lm_weights * (2 if cuda else 4), 2 if cuda else 4, {}),
                **variants}

    # every variant once per round, the rounds one after another: a slow spell of the machine hits all of them
    rounds = {name: [] for name in variants}
    with torch.inference_mode():
        for index in range(args.rounds):
            for name, (bench_model, bench_inputs, bench_sync, *_) in variants.items():
                rounds[name].append(timed(bench_model, bench_inputs, args.new_tokens, args.repeats, gen, bench_sync))
            print(f"round {index + 1}/{args.rounds}: " + ", ".join(
                f"{name} {rounds[name][-1]['decode_tokens_per_s']:.0f}" for name in variants) + " tokens/s")

    results = {}
    for name, (_, _, _, weight_bytes, itemsize, extra) in variants.items():
        per_token = weight_bytes + kv_bytes(itemsize)
        same_size = read_bandwidth(per_token, args.device)
        rates = [r["decode_tokens_per_s"] for r in rounds[name]]
        prefills = [r["prefill_ms"] for r in rounds[name]]
        rate = statistics.median(rates)
        results[name] = {
            "prefill_ms": statistics.median(prefills), "decode_tokens_per_s": rate,
            "decode_tokens_per_s_range": [min(rates), max(rates)], "prefill_ms_range": [min(prefills), max(prefills)],
            "bytes_per_token": per_token, "weight_bytes": weight_bytes,
            "roofline_tokens_per_s": dram / per_token, "roofline_fraction": rate * per_token / dram,
            "roofline_fraction_range": [min(rates) * per_token / dram, max(rates) * per_token / dram],
            "same_size_read_gb_s": same_size / 1e9, "same_size_roofline_fraction": rate * per_token / same_size,
            **extra,
        }
        print(f"{name:>22}: prefill {results[name]['prefill_ms']:7.1f} ms, decode {rate:7.1f} tokens/s "
              f"[{min(rates):.1f}, {max(rates):.1f}] = {100 * results[name]['roofline_fraction']:5.1f}% of "
              f"{dram / per_token:6.1f} ({per_token / 1e6:.1f} MB/token; same-size read {same_size / 1e9:.1f} GB/s: "
              f"{100 * results[name]['same_size_roofline_fraction']:.1f}%)")

    base = results["pytorch"]
    for r in results.values():
        r["decode_speedup"] = r["decode_tokens_per_s"] / base["decode_tokens_per_s"]
        r["prefill_speedup"] = base["prefill_ms"] / r["prefill_ms"]
    default = "gqa" if not gqa_reason else "traced"
    checks = {}
    if not cuda:
        checks = {
            f"ort_{default}_fp32 >= 75% of roofline": results[f"ort_{default}_fp32"]["roofline_fraction"]
            >= TARGETS["roofline_fp32"],
            f"ort_{default}_int8 >= 50% of roofline": results[f"ort_{default}_int8"]["roofline_fraction"]
            >= TARGETS["roofline_int8"],
            **{f"ort_{default}_{dtype} prefill >= 2x PyTorch": results[f"ort_{default}_{dtype}"]["prefill_speedup"]
               >= TARGETS["prefill_speedup"] for dtype in ("fp32", "int8")},
        }
    for name, r in results.items():
        print(f"{name:>22}: decode {r['decode_speedup']:.2f}x PyTorch, prefill {r['prefill_speedup']:.2f}x")
    for check, ok in checks.items():
        print(f"{'meets' if ok else 'BELOW'}: {check}")
    report = {
        "preset": args.preset, "device": args.device, "model_parameters": params, "threads": args.threads,
        "new_tokens": args.new_tokens, "rounds": args.rounds, "repeats": args.repeats,
        "prompt_tokens": prompt_tokens, "cpu_count": os.cpu_count(),
        "dram_read_bandwidth_gb_s": dram / 1e9, "mean_context": mean_context,
        "torch": torch.__version__, "transformers": transformers.__version__, "onnxruntime": ort.__version__,
        "gqa_decoder": gqa_reason or "made by onnxruntime-genai's model builder",
        "traced_fp32_fused_ops": fused_ops, "results": results, "targets": checks,
    }
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    print(f"report written to {args.report}")
    return report


if __name__ == "__main__":
    main()
