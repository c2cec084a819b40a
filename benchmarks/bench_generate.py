"""Generation speed: hf-llava vs transformers' own llava, same weights and inputs, in one run.

Measures prefill latency (one forward over a prompt with an image) and decode throughput (tokens/s
of greedy generation after the prefill), alternating the two models run by run so that machine noise
hits both alike, and writes the medians and ratios (ours / anchor; > 1 means we are faster) to a JSON
report.

    python benchmarks/bench_generate.py [--new-tokens 32] [--repeats 5] [--report benchmarks/reports/generate.json]
"""

import argparse
import json
import os
import platform
import statistics
import time

import torch
import transformers

from hf_llava.tiny import build_llava, demo_image


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--report", default="benchmarks/reports/generate.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    # ~50M parameters: CLIP-like tower (224px, 16px patches -> 196 visual tokens) + 12-layer Llama.
    ours, processor = build_llava(vision_hidden_size=384, vision_layers=6, image_size=224, patch_size=16,
                                  hidden_size=512, num_layers=12, num_heads=8, intermediate_size=1376)
    c = ours.config
    anchor_config = transformers.LlavaConfig(
        vision_config=c.vision_config.to_dict(), text_config=c.text_config.to_dict(),
        image_token_index=c.image_token_index, image_seq_length=c.image_seq_length)
    anchor = transformers.LlavaForConditionalGeneration(anchor_config).eval()
    anchor.load_state_dict(ours.state_dict(), strict=True)
    params = sum(p.numel() for p in ours.parameters())

    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image in detail."}]}],
        add_generation_prompt=True)
    inputs = processor(images=demo_image(256), text=prompt, return_tensors="pt")
    gen = dict(do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)

    models = {"hf_llava": ours, "transformers_llava": anchor}
    samples = {name: {"prefill": [], "generate": []} for name in models}
    with torch.inference_mode():
        outputs = {name: m.generate(**inputs, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, **gen)
                   for name, m in models.items()}  # warm-up, and the tokens must agree
        same_tokens = torch.equal(outputs["hf_llava"], outputs["transformers_llava"])
        for _ in range(args.repeats):
            for name, model in models.items():
                samples[name]["prefill"].append(timed(lambda model=model: model(**inputs)))
                samples[name]["generate"].append(timed(lambda model=model: model.generate(
                    **inputs, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, **gen)))

    results = {}
    for name, s in samples.items():
        prefill = statistics.median(s["prefill"])
        generate = statistics.median(s["generate"])
        results[name] = {
            "prefill_ms": round(prefill * 1e3, 2),
            "decode_tokens_per_s": round((args.new_tokens - 1) / max(generate - prefill, 1e-9), 2),
        }
    ratios = {
        "prefill_speedup": round(results["transformers_llava"]["prefill_ms"] / results["hf_llava"]["prefill_ms"], 3),
        "decode_speedup": round(results["hf_llava"]["decode_tokens_per_s"]
                                / results["transformers_llava"]["decode_tokens_per_s"], 3),
    }
    report = {
        "benchmark": "generate",
        "parameters": params,
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "image_tokens": int(c.image_seq_length),
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "threads": args.threads,
        "identical_greedy_tokens": same_tokens,
        "results": results,
        "ratios_ours_vs_anchor": ratios,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "machine": platform.processor() or platform.machine(),
    }
    os.makedirs(os.path.dirname(args.report) or ".", exist_ok=True)
    with open(args.report, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
