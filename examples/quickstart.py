"""Build a LLaVA from a vision tower and an LM, save it, reload it through the Auto classes, ask it a question.

    python examples/quickstart.py --vision openai/clip-vit-large-patch14-336 --lm lmsys/vicuna-7b-v1.5 --image cat.jpg

Without arguments it uses a small random model built offline (the answer is then noise).
"""

import argparse

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

import hf_llava  # noqa: F401  registers the Auto classes
from hf_llava import from_vision_and_text
from hf_llava.processing import load_image
from hf_llava.tiny import build_llava, demo_image

parser = argparse.ArgumentParser()
parser.add_argument("--vision", help="a CLIP / SigLIP folder or Hub id")
parser.add_argument("--lm", help="a causal LM folder or Hub id")
parser.add_argument("--image", help="an image file")
parser.add_argument("--output", default="my-llava")
args = parser.parse_args()

if args.vision and args.lm:
    model, processor = from_vision_and_text(args.vision, args.lm, chat_template="vicuna_v1", dtype=torch.bfloat16)
else:
    model, processor = build_llava()
model.save_pretrained(args.output)
processor.save_pretrained(args.output)

model = AutoModelForImageTextToText.from_pretrained(args.output)
processor = AutoProcessor.from_pretrained(args.output)
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown in the image?"}]}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
image = load_image(args.image) if args.image else demo_image()
inputs = processor(images=image, text=prompt, return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=32, do_sample=False)
print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
