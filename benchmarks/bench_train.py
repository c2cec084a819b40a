"""Stage-1 training throughput: our trainer vs plain TRL `SFTTrainer` on transformers' llava.

Each run happens in its own subprocess (peak RSS per run via `resource.getrusage`). Same weights (our state dict
loaded into `transformers.LlavaForConditionalGeneration`), same images and captions, same batch size, CPU.
TRL's baseline uses TRL's own `DataCollatorForVisionLanguageModeling` on a `messages` + `images` dataset (images
as `datasets.Image` features decoded on access, as ours are read on access; TRL's collator masks
neither the prompt nor the image tokens, so it does slightly different work; the comparison is of the pipelines).

    python benchmarks/bench_train.py --samples 64 --epochs 2 --batch-size 8
writes ratios to benchmarks/reports/train.json.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def _make_data(folder: str, n: int) -> str:
    from hf_llava import tiny

    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    records = []
    for i in range(n):
        tiny.demo_image(48 + (i % 5) * 8, seed=i).save(os.path.join(folder, "images", f"{i}.png"))
        records.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image."},
            {"from": "gpt", "value": "A red square and a green disc on a blue background."}]})
    path = os.path.join(folder, "data.json")
    with open(path, "w") as f:
        json.dump(records, f)
    return path


def _run(kind: str, data: str, folder: str, epochs: float, batch: int, size: dict) -> dict:
    """One training run in this process; returns samples/s."""
    import torch
    from trl import SFTConfig, SFTTrainer

    from hf_llava import tiny
    from hf_llava.data import load_llava_dataset
    from hf_llava.trainers import LlavaStage1Config, LlavaStage1Trainer, set_trainable

    torch.set_num_threads(2)
    model, processor = tiny.build_llava(**size)
    processor.chat_template = tiny.build_processor(processor.tokenizer, model.config, "plain").chat_template
    out = tempfile.mkdtemp()
    common = dict(output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=batch, save_strategy="no",
                  report_to="none", disable_tqdm=True, logging_steps=1000, bf16=False, seed=0)
    ds = load_llava_dataset(data, image_folder=os.path.join(folder, "images"))
    if kind == "ours":
        # the processor's padding, as the TRL baseline gets (the recipe's stage 1 would crop instead)
        args = LlavaStage1Config(save_at_end=False, image_aspect_ratio="pad", **common)
        trainer = LlavaStage1Trainer(model=model, args=args, train_dataset=ds, processing_class=processor)
    else:
        from transformers import LlavaConfig as HFConfig, LlavaForConditionalGeneration as HFLlava

        c = model.config
        hf_config = HFConfig(vision_config=c.vision_config.to_dict(), text_config=c.text_config.to_dict(),
                             image_token_index=c.image_token_index, projector_hidden_act=c.projector_hidden_act,
                             vision_feature_layer=c.vision_feature_layer,
                             vision_feature_select_strategy=c.vision_feature_select_strategy,
                             image_seq_length=c.image_seq_length)
        hf_model = HFLlava(hf_config)
        hf_model.load_state_dict(model.state_dict(), strict=True)
        set_trainable(hf_model, ["projector"])
        # TRL's usual VLM dataset: an `images` column of `datasets.Image` features, decoded on access, as
        # ours reads its image files on access (neither side holds decoded images in memory up front).
        rows = [{"images": [r["image"]],
                 "messages": [{"role": "user", "content": [{"type": "image", "text": None}]},
                              {"role": "assistant",
                               "content": [{"type": "text", "text": r["conversations"][1]["value"]}]}]} for r in ds]
        from datasets import Dataset, Image as ImageFeature, Sequence

        args = SFTConfig(learning_rate=1e-3, gradient_checkpointing=False, max_length=None,
                         dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False, **common)
        dataset = Dataset.from_list(rows).cast_column("images", Sequence(ImageFeature()))
        trainer = SFTTrainer(model=hf_model, args=args, train_dataset=dataset,
                             processing_class=processor)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"samples_per_s": len(ds) * epochs / seconds, "seconds": seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=112, help="tower input (patch 8): (size/8)^2 tokens")
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--vision-hidden-size", type=int, default=128)
    parser.add_argument("--hidden-size", type=int, default=256, help="LM width")
    parser.add_argument("--num-layers", type=int, default=4, help="LM depth")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant, alternated; the median is kept")
    parser.add_argument("--report", default=os.path.join(os.path.dirname(__file__), "reports", "train.json"))
    parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = {"image_size": args.image_size, "patch_size": 8, "vision_layers": args.vision_layers,
            "vision_hidden_size": args.vision_hidden_size, "hidden_size": args.hidden_size,
            "num_layers": args.num_layers}
    if args._child:
        kind, folder = args._child
        print(json.dumps(_run(kind, os.path.join(folder, "data.json"), folder, args.epochs, args.batch_size, size)))
        return
    folder = tempfile.mkdtemp()
    _make_data(folder, args.samples)
    kinds = ("trl_baseline", "ours")
    samples = {kind: [] for kind in kinds}
    for _ in range(args.repeats):  # alternate the variants so that machine noise hits them alike
        for kind in kinds:
            cmd = [sys.executable, __file__, "--_child", kind, folder, "--samples", str(args.samples), "--epochs",
                   str(args.epochs), "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
                   "--vision-layers", str(args.vision_layers), "--vision-hidden-size", str(args.vision_hidden_size),
                   "--hidden-size", str(args.hidden_size), "--num-layers", str(args.num_layers)]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if out.returncode:
                raise SystemExit(f"{kind} failed:\n{out.stderr[-3000:]}")
            samples[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(kind, samples[kind][-1])
    results = {}
    for kind, runs in samples.items():
        results[kind] = {"samples_per_s": statistics.median(r["samples_per_s"] for r in runs),
                         "seconds": statistics.median(r["seconds"] for r in runs),
                         "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}
    report = {
        "setup": {"samples": args.samples, "epochs": args.epochs, "batch_size": args.batch_size, **size},
        "runs": results,
        "ours_vs_trl_samples_per_s": results["ours"]["samples_per_s"] / results["trl_baseline"]["samples_per_s"],
        "ours_vs_trl_peak_rss": results["ours"]["peak_rss_mb"] / results["trl_baseline"]["peak_rss_mb"],
    }
    os.makedirs(os.path.dirname(args.report), exist_ok=True)
    with open(args.report, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
