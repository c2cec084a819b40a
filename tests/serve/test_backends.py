"""`hf-llava serve` over its other backends and models, spoken to with the `openai` client: an ONNX export on ONNX
Runtime and a LLaVA-NeXT (AnyRes) model answer as their in-process greedy `generate`, alone, streamed and batched
with others (AnyRes images of three aspect ratios in one batch); requests that arrive one after another share a batch;
the command itself starts as a real process and answers, and refuses `--backend onnx` for a folder that is not an
export."""

import queue
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
import torch

from hf_llava import LlavaConfig, tiny
from hf_llava.onnx.loading import load_model
from hf_llava.serve.app import ChatService, build_app, running
from hf_llava.serve.engine import GATHER_WINDOWS, Engine, Request, Sampling
from tests.eval.conftest import next_dir  # noqa: F401  (a fixture: the saved NeXT whose answers differ per image)
from tests.onnx.conftest import _export
from tests.serve.conftest import in_process
from tests.serve.test_api import QUESTION, data_url, image_message


def ask_together(client, name: str, messages: list, max_tokens: int) -> list:
    """Each conversation in `messages` sent at once from its own thread; the greedy answers in order."""
    answers = [None] * len(messages)

    def ask(i):
        answers[i] = client.chat.completions.create(model=name, messages=messages[i], max_tokens=max_tokens,
                                                    temperature=0).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(messages))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


@pytest.fixture(scope="module")
def onnx_served(tmp_path_factory, tokenizer, tiny_config):
    """A tiny model (its LM drawn at std 0.2, so different images get different answers) exported to ONNX, loaded
    back with `load_model` and served on ONNX Runtime."""
    pytest.importorskip("onnxruntime")
    fields = tiny_config.to_dict()
    fields["text_config"]["initializer_range"] = 0.2
    *_, folder = _export(tmp_path_factory, LlavaConfig.from_dict(fields), tokenizer, validate=False)
    model, processor = load_model(folder)
    engine = Engine(model, processor, max_batch_size=8, gather_seconds=0.3)
    with running(build_app(ChatService(model, processor, "tiny-onnx", engine))) as base:
        yield model, processor, engine, openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    engine.close()


def test_onnx_backend_answers_as_ort_generate_whole_streamed_and_batched(onnx_served):
    model, processor, engine, client = onnx_served
    assert type(model).__name__ == "ORTLlavaForConditionalGeneration"
    image = tiny.demo_image(64, seed=1)
    expected = in_process(model, processor, [image], QUESTION, 12)
    reply = client.chat.completions.create(model="tiny-onnx", messages=image_message(data_url(image)), max_tokens=12,
                                           temperature=0)
    assert reply.choices[0].message.content == expected and expected
    chunks = list(client.chat.completions.create(model="tiny-onnx", messages=image_message(data_url(image)),
                                                 max_tokens=12, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected

    images = [tiny.demo_image(36 + 8 * i, seed=10 + i) for i in range(4)]
    texts = [f"What is in picture {i}?" for i in range(4)]
    alone = [in_process(model, processor, [im], text, 10) for im, text in zip(images, texts)]
    assert len(set(alone)) > 1, alone  # a row answered with another row's image would show
    before = len(engine.batches)
    answers = ask_together(client, "tiny-onnx", [image_message(data_url(im), t) for im, t in zip(images, texts)], 10)
    assert answers == alone
    assert max(engine.batches[before:]) > 1  # they shared batches


def test_anyres_images_of_three_aspect_ratios_share_a_batch_and_each_answers_as_alone(next_dir, next_images):  # noqa: F811
    model, processor = load_model(next_dir, device="cpu")
    assert processor.anyres
    expected = [in_process(model, processor, [image], QUESTION, 10) for image in next_images]
    assert len(set(expected)) == len(next_images), expected  # each image gets its own answer
    engine = Engine(model, processor, max_batch_size=8, gather_seconds=0.3)
    try:
        with running(build_app(ChatService(model, processor, "tiny-next", engine))) as base:
            client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
            answers = ask_together(client, "tiny-next", [image_message(data_url(im)) for im in next_images], 10)
    finally:
        engine.close()
    assert answers == expected
    assert max(engine.batches) > 1  # wide, tall and square tiles were padded into shared batches


def test_requests_arriving_one_after_another_share_a_batch(tiny_model, tiny_processor):
    """Each request joins within the gather window of the one before, the last after the first window: one batch."""
    gather, gap, count = 0.3, 0.12, 4
    assert gap * (count - 1) > gather and gap * (count - 1) < GATHER_WINDOWS * gather
    prompt = tiny_processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                                                add_generation_prompt=True)
    features = {k: v[0] for k, v in tiny_processor(text=prompt).items()}
    engine = Engine(tiny_model, tiny_processor, max_batch_size=8, gather_seconds=gather)
    events: "queue.Queue" = queue.Queue()
    try:
        for _ in range(count):
            engine.submit(Request(features, 2, Sampling(), events.put))
            time.sleep(gap)
        finished = 0
        while finished < count:
            event = events.get(timeout=60)
            assert event.error is None, event.error
            finished += event.finish_reason is not None
    finally:
        engine.close()
    assert engine.batches == [count]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_serve_command_starts_answers_and_stops(saved_llava, tiny_model, tiny_processor):
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "hf_llava.cli", "serve", str(saved_llava), "--port", str(port),
                               "--no-ui"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, server.communicate()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not answer /health within 90 s"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == [saved_llava.name]
        image = tiny.demo_image(48, seed=3)
        reply = client.chat.completions.create(model=saved_llava.name, messages=image_message(data_url(image)),
                                               max_tokens=8, temperature=0)
        with torch.no_grad():
            assert reply.choices[0].message.content == in_process(tiny_model, tiny_processor, [image], QUESTION, 8)
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}" in out


def test_serve_backend_onnx_refuses_a_pytorch_folder(saved_llava, cli_error):
    result = subprocess.run([sys.executable, "-m", "hf_llava.cli", "serve", str(saved_llava), "--backend", "onnx",
                             "--no-ui", "--port", str(_free_port())], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    cli_error(lines, "serve")
    assert "--backend onnx" in lines[0] and "hf-llava export-onnx" in result.stderr
