"""What the server's answers are compared with: the same model's greedy generation, in process."""


def greedy_answer(model, processor, conversation: list, images: list, max_new_tokens: int) -> str:
    """The answer `model.generate` gives (greedy) to `conversation` (the chat template's messages, its `images` in
    order), decoded as the server decodes."""
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=images or None, text=prompt, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def in_process(model, processor, images: list, text: str, max_new_tokens: int) -> str:
    """The greedy answer to one user message: `images` then `text`."""
    content = [{"type": "image"}] * len(images) + [{"type": "text", "text": text}]
    return greedy_answer(model, processor, [{"role": "user", "content": content}], images, max_new_tokens)
