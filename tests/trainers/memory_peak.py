"""Run a few training steps of a small LLaVA in this (fresh) process and print its measured peak memory and the
memory plan of the same run, as one JSON line. `test_memory.py` runs it as a subprocess.

Usage: python memory_peak.py CASE_JSON, CASE_JSON a dict with `stage` (1 or 2), `lora`, `data`, `images`, `output`,
`device` ("cpu" or "cuda") and the model's and run's sizes (see `SIZES`).

CPU: the peak resident set (VmHWM) minus the resident set once everything is imported and the data and processor
are ready, just before the model is built; with MALLOC_MMAP_THRESHOLD_ set by the caller, every large tensor is its
own mapping, returned to the system when freed, so the resident set follows the live tensors. CUDA:
`torch.cuda.max_memory_allocated()` of the run (all of it is the run's: the model is built on the device).
`load_in` ("4bit"): the model is saved first and loaded back through bitsandbytes as `hf-llava train --load-in`
loads it; the loader leaves the safetensors file mapped (its unquantised tensors are views of the mapping, and the
pages it read to quantise stay resident, clean file pages the system may drop), so those tensors get copies of their
own, the mapping goes, and the peak is reset (`/proc/self/clear_refs`; CUDA's peak statistics) to measure the
training, not the loader's transient fp32 reads.
"""

import gc
import json
import re
import sys

SIZES = dict(hidden_size=512, num_layers=8, intermediate_size=1376, vision_hidden_size=128, vision_layers=2,
             batch_size=2, max_length=128)


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def main(case: dict) -> dict:
    import torch
    from transformers import set_seed

    from hf_llava import tiny
    from hf_llava.data import load_llava_dataset
    from hf_llava.modeling import LlavaForConditionalGeneration
    from hf_llava.trainers import LlavaStage1Config, LlavaStage1Trainer, LlavaStage2Config, LlavaStage2Trainer
    from hf_llava.trainers import lm_lora_config
    from hf_llava.trainers.memory import plan_training
    from hf_llava.trainers.recipe import LORA, QLORA

    sizes = {**SIZES, **case.get("sizes", {})}
    stage, lora, cuda = case["stage"], case.get("lora", False), case["device"] == "cuda"
    load_in = case.get("load_in")
    recipe = QLORA if load_in else LORA
    checkpointing = bool(load_in) or case.get("gradient_checkpointing", False)
    tokenizer = tiny.build_tokenizer()
    config = tiny.build_config(tokenizer, hidden_size=sizes["hidden_size"], num_layers=sizes["num_layers"],
                               intermediate_size=sizes["intermediate_size"],
                               vision_hidden_size=sizes["vision_hidden_size"], vision_layers=sizes["vision_layers"])
    processor = tiny.build_processor(tokenizer, config)
    dataset = load_llava_dataset(case["data"], image_folder=case["images"])
    config_class = LlavaStage1Config if stage == 1 else LlavaStage2Config
    args = config_class(output_dir=case["output"], per_device_train_batch_size=sizes["batch_size"],
                        max_length=sizes["max_length"], max_steps=2, logging_steps=1, save_strategy="no",
                        save_at_end=False, disable_tqdm=True, seed=0, bf16=cuda, use_cpu=not cuda,
                        gradient_checkpointing=checkpointing)
    plan = plan_training(config, stage=stage, lora=lora, lora_r=recipe["r"], load_in=load_in, bnb_double_quant=True,
                         dtypes="float32", mixed_precision="bf16" if cuda else None, batch_size=sizes["batch_size"],
                         max_length=sizes["max_length"], gradient_checkpointing=checkpointing, suggest=False)
    set_seed(0)
    if load_in:
        LlavaForConditionalGeneration(config).save_pretrained(case["output"] + "-model")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _status("VmRSS")
    if load_in:
        from hf_llava._loading import bitsandbytes_config

        quantization = bitsandbytes_config(int(load_in[0]), device=case["device"])
        model = LlavaForConditionalGeneration.from_pretrained(case["output"] + "-model",
                                                              quantization_config=quantization,
                                                              device_map={"": args.device})
        if not cuda:  # the loader's unquantised tensors view the file's mapping: own copies, so it is unmapped
            for tensor in [*model.parameters(), *model.buffers()]:
                if tensor.is_floating_point():
                    tensor.data = tensor.data.clone()
            gc.collect()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # the peak resident set starts again from the current one
    else:
        with torch.device("cuda" if cuda else "cpu"):
            model = LlavaForConditionalGeneration(config)
    common = dict(model=model, args=args, train_dataset=dataset, processing_class=processor)
    if stage == 1:
        trainer = LlavaStage1Trainer(**common)
    else:
        peft_config = lm_lora_config(r=recipe["r"], lora_alpha=recipe["lora_alpha"]) if lora else None
        trainer = LlavaStage2Trainer(peft_config=peft_config, **common)
    trainer.train()
    peak = torch.cuda.max_memory_allocated() if cuda else _status("VmHWM")
    return {"plan": plan.total, "measured": peak - before, "plan_rows": {
        "weights": plan.weights, "gradients": plan.gradients, "optimizer": plan.optimizer,
        "activations": plan.activations, "autocast_copies": plan.autocast_copies}}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
