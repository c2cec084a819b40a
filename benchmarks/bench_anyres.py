"""The cost of resolution: LLaVA-1.5's one 336px tile vs LLaVA-NeXT's AnyRes grids, and our NeXT vs transformers'.

One small random model (a CLIP-like tower at 336px with 14px patches, as CLIP-L/14-336 but narrow and shallow; a
small Llama), the same weights in every row. For one image prompt (batch 1) it measures prefill latency (one forward
over the prompt: tower on every tile, projector, packing, LM) and counts the visual tokens, for:
  llava-1.5      a 672x672 image padded to a square and resized to one 336 tile (576 tokens, whatever the size);
  next 672x672   the same image on the 2x2 grid (4 tiles + the overview);
  next 336x1344  a 1:4 image on a 1x4 grid: [336, 1344] is added to the released pinpoints, whose widest grid is
                 1x3 ([336, 1008]);
  next 336x1344 released   the same image with the released pinpoints only (it fits the 1x3 grid, the padding cut).
Each NeXT row also runs transformers' `LlavaNextForConditionalGeneration` with the same weights, the two back to back
(in turns, first one then the other first); `speed_ratio` = transformers' time / ours (>= 1: ours is not slower),
the median of the rounds' ratios; `max_abs_logit_diff` how far their logits are apart. Every row and model runs once
per round, `--repeats` rounds after `--warmup` untimed runs, so that load from elsewhere on the machine falls on all
alike; the medians are reported, with each row's prefill and visual tokens against LLaVA-1.5's, and the JSON report
is written at once.

    python benchmarks/bench_anyres.py [--repeats 6] [--threads 2] [--report benchmarks/reports/anyres.json]
"""

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers

from hf_llava import LlavaConfig, LlavaForConditionalGeneration, tiny
from hf_llava._io import write_json_atomic
from hf_llava.conversion import transformers_config
from hf_llava.modeling.configuration_llava import default_grid_pinpoints
from hf_llava.modeling.modeling_llava import anyres_grid

TILE, PATCH = 336, 14
WIDE = [TILE, 4 * TILE]  # [height, width] of the 1x4 grid, not among the released pinpoints


def transformers_next(model: LlavaForConditionalGeneration) -> transformers.LlavaNextForConditionalGeneration:
    """transformers' llava_next with `model`'s config and weights (the parameter names are the same)."""
    anchor = transformers.LlavaNextForConditionalGeneration(transformers_config(model.config)).eval()
    anchor.load_state_dict(model.state_dict(), strict=True)
    return anchor


def with_weights(config: LlavaConfig, state: dict) -> LlavaForConditionalGeneration:
    """A model of `config` holding `state` (the NeXT model's weights; 1.5 has no `image_newline`)."""
    model = LlavaForConditionalGeneration(config).eval()
    names = set(model.state_dict())
    model.load_state_dict({k: v for k, v in state.items() if k in names}, strict=True)
    return model


def median_ms(samples: list) -> float:
    return round(1e3 * statistics.median(samples), 2)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vision-hidden-size", type=int, default=256)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--report", default=str(Path(__file__).parent / "reports" / "anyres.json"))
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 1:
        parser.error(f"--repeats {args.repeats} --warmup {args.warmup}: both must be at least 1.")
    torch.set_num_threads(args.threads)

    tokenizer = tiny.build_tokenizer()
    size = dict(vision_hidden_size=args.vision_hidden_size, vision_layers=args.vision_layers, image_size=TILE,
                patch_size=PATCH, hidden_size=args.hidden_size, num_layers=args.num_layers,
                num_heads=max(1, args.hidden_size // 64))
    released = default_grid_pinpoints(TILE)
    configs = {
        "1.5": tiny.build_config(tokenizer, image_aspect_ratio="pad", **size),
        "next": tiny.build_config(tokenizer, image_aspect_ratio="anyres", image_grid_pinpoints=released + [WIDE],
                                  **size),
        "released": tiny.build_config(tokenizer, image_aspect_ratio="anyres", **size),
    }
    torch.manual_seed(0)
    state = LlavaForConditionalGeneration(configs["next"]).state_dict()
    models = {name: with_weights(config, state) for name, config in configs.items()}
    anchors = {name: transformers_next(models[name]) for name in ("next", "released")}
    processors = {name: tiny.build_processor(tokenizer, config) for name, config in configs.items()}
    square = tiny.demo_image(2 * TILE).resize((2 * TILE, 2 * TILE))
    wide = tiny.demo_image(4 * TILE, seed=1).resize((4 * TILE, TILE))  # PIL sizes are (width, height)
    rows = [  # (name, model and processor, image)
        ("llava-1.5 (pad, 336)", "1.5", square),
        ("next 672x672", "next", square),
        ("next 336x1344", "next", wide),
        ("next 336x1344 released", "released", wide),
    ]
    params = sum(p.numel() for p in models["next"].parameters())
    print(f"model: {params / 1e6:.1f}M parameters; tower {TILE}px / {PATCH}px patches, width "
          f"{args.vision_hidden_size}, {args.vision_layers} layers; Llama width {args.hidden_size}, {args.num_layers} "
          f"layers; {args.threads} threads, {args.warmup} warm-up + {args.repeats} runs per model and row")

    cases = []  # (row, kind, image, inputs, {"ours": model, "transformers": anchor})
    for name, kind, image in rows:
        processor = processors[kind]
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}],
            add_generation_prompt=True)
        runners = {"ours": models[kind], **({"transformers": anchors[kind]} if kind in anchors else {})}
        cases.append((name, kind, image, processor(images=[image], text=prompt, return_tensors="pt"), runners))

    start = time.perf_counter()
    samples = {(name, label): [] for name, *_, runners in cases for label in runners}
    logits = {}
    with torch.inference_mode():
        for name, *_, inputs, runners in cases:
            for label, model in runners.items():
                for _ in range(args.warmup):  # untimed; the last one's logits compare ours with transformers'
                    logits[name, label] = model(**inputs).logits
        for round_ in range(args.repeats):
            for name, *_, inputs, runners in cases:
                order = list(runners.items())
                for label, model in order[::-1] if round_ % 2 else order:  # neither always runs second
                    t0 = time.perf_counter()
                    model(**inputs)
                    samples[name, label].append(time.perf_counter() - t0)

    results = []
    for name, kind, image, inputs, runners in cases:
        config = configs[kind]
        if config.image_aspect_ratio == "anyres":
            grid = "{}x{}".format(*anyres_grid(tuple(int(x) for x in inputs["image_sizes"][0]), config))
        else:
            grid = "1x1"
        row = {
            "row": name, "image": [image.height, image.width], "grid": grid,
            "tiles": int(inputs["pixel_values"].shape[1]) if inputs["pixel_values"].dim() == 5 else 1,
            "visual_tokens": int((inputs["input_ids"] == config.image_token_id).sum()),
            "prompt_tokens": int(inputs["input_ids"].shape[1]),
            "prefill_ms": median_ms(samples[name, "ours"]),
        }
        if "transformers" in runners:
            row["transformers_prefill_ms"] = median_ms(samples[name, "transformers"])
            # per round (the two ran back to back), then the median: robust to load that comes and goes
            row["speed_ratio"] = round(statistics.median(
                theirs / ours for ours, theirs in zip(samples[name, "ours"], samples[name, "transformers"])), 3)
            row["max_abs_logit_diff"] = float((logits[name, "ours"] - logits[name, "transformers"]).abs().max())
        results.append(row)

    anchor = results[0]
    for row in results:  # the cost of resolution, against LLaVA-1.5's fixed 336
        row["prefill_vs_1.5"] = round(row["prefill_ms"] / anchor["prefill_ms"], 2)
        row["visual_tokens_vs_1.5"] = round(row["visual_tokens"] / anchor["visual_tokens"], 2)
    print(f"\n{'row':<26}{'grid':>5}{'tiles':>6}{'visual':>8}{'prompt':>8}{'ours ms':>10}{'x 1.5':>7}"
          f"{'transformers ms':>17}{'speed_ratio':>13}")
    for row in results:
        theirs = (f"{row['transformers_prefill_ms']:>17.1f}{row['speed_ratio']:>13.3f}"
                  if "speed_ratio" in row else f"{'':>17}{'':>13}")
        print(f"{row['row']:<26}{row['grid']:>5}{row['tiles']:>6}{row['visual_tokens']:>8}{row['prompt_tokens']:>8}"
              f"{row['prefill_ms']:>10.1f}{row['prefill_vs_1.5']:>7.2f}{theirs}")
    report = {
        "benchmark": "anyres",
        "parameters": params,
        "tower": {"image_size": TILE, "patch_size": PATCH, "hidden_size": args.vision_hidden_size,
                  "layers": args.vision_layers},
        "language_model": {"hidden_size": args.hidden_size, "layers": args.num_layers},
        "pinpoints": {"released": released, "added_for_1x4": WIDE},
        "threads": args.threads, "warmup": args.warmup, "repeats": args.repeats,
        "seconds": round(time.perf_counter() - start, 1),
        "rows": results,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "machine": platform.processor() or platform.machine(),
    }
    write_json_atomic(args.report, report)
    print(f"\nreport written to {args.report}")
    return report


if __name__ == "__main__":
    main()
