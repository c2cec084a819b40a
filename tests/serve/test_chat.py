"""`hf-llava chat`: the terminal chat, run as a real command with its input piped in."""

import os
import subprocess
import sys

import torch

from hf_llava import tiny


def test_chat_streams_multi_turn_answers_equal_to_generate(tmp_path):
    model, processor = tiny.build_llava(seed=0)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    image = tiny.demo_image(64, seed=3)
    image.save(tmp_path / "photo.png")
    questions = ["What is shown?", "And the colour?"]
    # the same number of threads as this process's generate below: another reduction order may flip a near tie
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run(
        [sys.executable, "-m", "hf_llava.cli", "chat", str(tmp_path / "model"), "--image", str(tmp_path / "photo.png"),
         "--max-tokens", "8", "--device", "cpu"],
        input="\n".join(questions) + "\n\n", capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    conversation, answers = [], []
    for i, question in enumerate(questions):  # what the chat should have answered, turn by turn
        conversation.append({"role": "user", "content": ([{"type": "image"}] if i == 0 else [])
                             + [{"type": "text", "text": question}]})
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
        inputs = processor(images=image, text=prompt, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        answers.append(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
        conversation.append({"role": "assistant", "content": [{"type": "text", "text": answers[-1]}]})
    assert done.stdout.count("ASSISTANT: ") == 2
    for answer in answers:
        assert f"ASSISTANT: {answer}\n" in done.stdout


def test_chat_names_a_bad_image_in_two_lines(tmp_path):
    model, processor = tiny.build_llava(seed=0)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    done = subprocess.run([sys.executable, "-m", "hf_llava.cli", "chat", str(tmp_path / "model"), "--image",
                           str(tmp_path / "missing.png"), "--device", "cpu"], input="Hi\n\n", capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) <= 2 and lines[0].startswith("hf-llava chat: error: ") and "missing.png" in lines[0]
