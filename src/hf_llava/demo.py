"""`hf-llava demo`: the offline main job.

Builds a small LLaVA (random CLIP tower + projector + Llama LM, a tokenizer trained on the spot), saves
it, reloads it through `AutoModelForImageTextToText` / `AutoProcessor`, and answers a question about
a generated image with greedy decoding. The weights are random, so the answer is not meaningful: the
demo shows the whole path (templates, image expansion, splice, KV-cache generation, save and load)
working offline in seconds. Point `--model` at a real checkpoint folder for a real answer.
"""

import argparse
import contextlib
import os
import tempfile
import time

DEFAULT_QUESTION = "What is shown in the image?"


def run_demo(model_path: str = None, question: str = DEFAULT_QUESTION, image_path: str = None,
             max_new_tokens: int = 24, output_dir: str = None) -> dict:
    """Answers `question` about an image; returns the prompt, the answer and timings."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from . import tiny
    from .processing import load_image

    if model_path is not None and not os.path.isfile(os.path.join(model_path, "config.json")):
        raise FileNotFoundError(f"model={model_path} is not a model folder (no config.json); pass a saved hf-llava "
                                "folder, or leave it out to build a small random model.")
    if image_path is not None and not os.path.isfile(image_path):
        raise FileNotFoundError(f"image={image_path}: no such file; pass an image file.")
    kept = model_path or output_dir
    start = time.perf_counter()
    with contextlib.ExitStack() as cleanup:  # a temporary model folder is removed when the demo ends
        if model_path is None:
            model, processor = tiny.build_llava(hidden_size=128, num_layers=4, vision_hidden_size=64)
            model_path = output_dir or cleanup.enter_context(tempfile.TemporaryDirectory(prefix="hf-llava-demo-"))
            model.save_pretrained(model_path)
            processor.save_pretrained(model_path)
        model = AutoModelForImageTextToText.from_pretrained(model_path).eval()
        processor = AutoProcessor.from_pretrained(model_path)
    image = load_image(image_path) if image_path else tiny.demo_image()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    answer = processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return {
        "model": kept or "built in a temporary folder (removed)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "prompt": prompt,
        "input_tokens": int(inputs["input_ids"].shape[1]),
        "image_tokens": int((inputs["input_ids"] == model.config.image_token_id).sum()),
        "answer": answer,
        "seconds": round(time.perf_counter() - start, 2),
    }


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="a saved hf-llava folder (default: build a small random one)")
    parser.add_argument("--image", default=None, help="an image file (default: a generated picture)")
    parser.add_argument("--question", default=DEFAULT_QUESTION, help="what to ask about the image")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="longest answer, in tokens")
    parser.add_argument("--output-dir", default=None,
                        help="where to save the built model (default: a temporary folder, removed at the end)")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = run_demo(args.model, args.question, args.image, args.max_new_tokens, args.output_dir)
    print(f"model      : {result['model']} ({result['parameters'] / 1e6:.1f}M parameters)")
    print(f"prompt     : {result['prompt']!r}")
    print(f"tokens     : {result['input_tokens']} in the prompt, {result['image_tokens']} of them visual")
    print(f"answer     : {result['answer']!r}")
    if args.model is None:
        print("note       : the built model has random weights, so the answer is noise; pass --model for a real one")
    print(f"time       : {result['seconds']} s")
    return 0
