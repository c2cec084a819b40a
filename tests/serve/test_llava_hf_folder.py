"""A llava-hf folder (transformers' own `llava` classes) served as it is: answers equal transformers' generate."""

import openai
import torch
import transformers

from hf_llava import tiny
from hf_llava.conversion import convert_hf_llava_to_llava_hf
from hf_llava.onnx.loading import load_model
from hf_llava.serve.app import ChatService, build_app, running
from hf_llava.serve.engine import Engine

from .test_api import QUESTION, data_url, image_message


def test_a_llava_hf_folder_is_served_with_transformers_classes(tmp_path):
    model, processor = tiny.build_llava(seed=0)
    model.save_pretrained(tmp_path / "ours")
    processor.save_pretrained(tmp_path / "ours")
    convert_hf_llava_to_llava_hf(tmp_path / "ours", tmp_path / "llava-hf", progress=False)
    served, served_processor = load_model(tmp_path / "llava-hf", device="cpu")
    assert type(served) is transformers.LlavaForConditionalGeneration
    image = tiny.demo_image(56, seed=2)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    inputs = served_processor(images=image, return_tensors="pt",
                              text=served_processor.apply_chat_template(conversation, add_generation_prompt=True))
    with torch.no_grad():
        output = served.generate(**inputs, max_new_tokens=8, do_sample=False)
    expected = served_processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    engine = Engine(served, served_processor)
    try:
        with running(build_app(ChatService(served, served_processor, "llava-hf", engine))) as base:
            client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
            reply = client.chat.completions.create(model="llava-hf", messages=image_message(data_url(image)),
                                                   max_tokens=8, temperature=0)
    finally:
        engine.close()
    assert reply.choices[0].message.content == expected
