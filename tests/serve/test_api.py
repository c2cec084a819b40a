"""`hf-llava serve`'s API, started for real on 127.0.0.1 and spoken to with the official `openai` client: answers
equal in-process greedy generation (alone, streamed, and batched with others), and every bad request gets its
OpenAI-style 4xx while the server goes on serving."""

import base64
import http.server
import io
import threading

import httpx
import openai
import pytest
import torch
from PIL import Image

from hf_llava import tiny
from hf_llava.serve.app import ChatService, build_app, running
from hf_llava.serve.engine import Engine
from hf_llava.serve.messages import ImagePolicy
from tests.serve.conftest import in_process

QUESTION = "What is shown in the image?"


def data_url(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def image_message(url: str, text: str = QUESTION) -> list:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny model behind the API (batches of up to 8), with a folder of images it may read."""
    torch.manual_seed(0)
    model, processor = tiny.build_llava(seed=0)
    folder = tmp_path_factory.mktemp("images")
    tiny.demo_image(48, seed=5).save(folder / "local.png")
    engine = Engine(model, processor, max_batch_size=8, gather_seconds=0.05)
    policy = ImagePolicy(max_pixels=200 * 200, allow_local=True)
    service = ChatService(model, processor, "tiny-llava", engine, policy)
    with running(build_app(service, max_body_bytes=2_000_000)) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        yield model, processor, engine, client, base, folder
    engine.close()


def test_models_and_health(served):
    *_, client, base, _ = served
    assert [m.id for m in client.models.list().data] == ["tiny-llava"]
    assert httpx.get(base + "/health").json() == {"status": "ok"}


def test_answers_equal_in_process_greedy_generation_whole_and_streamed(served):
    model, processor, _, client, *_ = served
    image = tiny.demo_image(64, seed=1)
    expected = in_process(model, processor, [image], QUESTION, 12)
    reply = client.chat.completions.create(model="tiny-llava", messages=image_message(data_url(image)),
                                           max_tokens=12, temperature=0)
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    chunks = list(client.chat.completions.create(model="tiny-llava", messages=image_message(data_url(image, "JPEG")),
                                                 max_tokens=12, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jpeg = Image.open(io.BytesIO(base64.b64decode(data_url(image, "JPEG").split(",")[1])))
    assert streamed == in_process(model, processor, [jpeg.convert("RGB")], QUESTION, 12)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens


def test_length_and_stop_finish_reasons(served):
    model, processor, _, client, *_ = served
    full = in_process(model, processor, [], "Describe a red square.", 16)
    reply = client.chat.completions.create(model="tiny-llava", messages=[{"role": "user", "content":
                                                                          "Describe a red square."}],
                                           max_tokens=16, temperature=0)
    assert reply.choices[0].message.content == full
    if reply.choices[0].finish_reason == "length":
        assert reply.usage.completion_tokens == 16
    stop = full.strip()[3:6]
    assert stop, full
    cut = client.chat.completions.create(model="tiny-llava", messages=[{"role": "user", "content":
                                                                        "Describe a red square."}],
                                         max_tokens=16, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == full[: full.index(stop)]


def test_concurrent_requests_are_batched_and_each_equals_its_answer_alone(served):
    model, processor, engine, client, *_ = served
    texts = [f"How many shapes are there in picture {i}?" for i in range(8)]
    images = [tiny.demo_image(40 + 4 * i, seed=i) for i in range(8)]
    expected = [in_process(model, processor, [image], text, 10) for image, text in zip(images, texts)]
    answers, before = [None] * 8, len(engine.batches)

    def ask(i):
        answers[i] = client.chat.completions.create(
            model="tiny-llava", messages=image_message(data_url(images[i]), texts[i]), max_tokens=10,
            temperature=0).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == expected
    assert max(engine.batches[before:]) > 1  # they shared batches


def test_local_and_remote_images_follow_the_flags(served):
    model, processor, _, client, base, folder = served
    local = str(folder / "local.png")
    expected = in_process(model, processor, [Image.open(local).convert("RGB")], QUESTION, 6)
    reply = client.chat.completions.create(model="tiny-llava", messages=image_message(local), max_tokens=6,
                                           temperature=0)
    assert reply.choices[0].message.content == expected
    with pytest.raises(openai.BadRequestError, match="--allow-remote-images"):
        client.chat.completions.create(model="tiny-llava", messages=image_message("http://127.0.0.1:1/x.png"))


def test_remote_images_are_fetched_only_when_allowed(tmp_path):
    tiny.demo_image(48, seed=6).save(tmp_path / "remote.png")
    handler = lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(tmp_path))  # noqa: E731
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    model, processor = tiny.build_llava(seed=0)
    engine = Engine(model, processor)
    service = ChatService(model, processor, "m", engine, ImagePolicy(allow_remote=True, max_bytes=100_000))
    try:
        with running(build_app(service)) as base:
            client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
            url = f"http://127.0.0.1:{files.server_address[1]}/remote.png"
            reply = client.chat.completions.create(model="m", messages=image_message(url), max_tokens=5,
                                                   temperature=0)
            expected = in_process(model, processor, [Image.open(tmp_path / "remote.png").convert("RGB")],
                                  QUESTION, 5)
            assert reply.choices[0].message.content == expected
            with pytest.raises(openai.BadRequestError, match="HTTP 404"):
                client.chat.completions.create(model="m", messages=image_message(url + ".missing"))
    finally:
        files.shutdown()
        engine.close()


BAD_REQUESTS = [
    ({"messages": image_message("data:image/png;base64,@@not-base64@@")}, 400, "invalid base64"),
    ({"messages": image_message("data:image/png;base64," + base64.b64encode(b"not an image").decode())}, 400,
     "not a readable image"),
    ({"messages": image_message("data:image/png;base64,")}, 400, "data: URL must be"),
    ({"messages": image_message(data_url(Image.new("RGB", (300, 300))))}, 413, "--max-image-pixels"),
    ({"messages": [{"role": "user", "content": "Compare <image> with this."}]}, 400, "places 1"),
    ({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 100_000}, 400, "maximum context length"),
    ({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": -3}, 400, "max_tokens=-3"),
    ({"messages": [{"role": "user", "content": "Hi"}], "n": 2}, 400, "n"),
    ({"messages": [{"role": "user", "content": "Hi"}], "temperature": 7}, 400, "temperature=7"),
    ({"messages": [{"role": "robot", "content": "Hi"}]}, 400, "role"),
    ({"messages": []}, 400, "non-empty list"),
    ({"messages": image_message("/etc/passwd.png")}, 400, "no such image file"),
]


@pytest.mark.parametrize("body, status, message", BAD_REQUESTS)
def test_bad_requests_get_openai_errors_and_the_server_goes_on(served, body, status, message):
    *_, client, base, _ = served
    response = httpx.post(base + "/v1/chat/completions", json={"model": "tiny-llava", **body}, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"] and set(error) >= {"message", "type", "param"}
    assert client.chat.completions.create(model="tiny-llava", messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=2).choices[0].message.content is not None


def test_unknown_model_body_limit_and_bad_json(served):
    *_, client, base, _ = served
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "Hi"}])
    big = httpx.post(base + "/v1/chat/completions", content=b"x" * 2_100_000,
                     headers={"content-type": "application/json"})
    assert big.status_code == 413 and "--max-body-bytes" in big.json()["error"]["message"]
    broken = httpx.post(base + "/v1/chat/completions", content=b"{not json",
                        headers={"content-type": "application/json"})
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]["message"]


def test_a_client_that_leaves_mid_stream_frees_its_row(served):
    _, _, engine, client, base, _ = served
    before = engine.dropped
    body = {"model": "tiny-llava", "messages": [{"role": "user", "content": "Tell a long story."}],
            "max_tokens": 1500, "temperature": 0, "stream": True}
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=60) as response:
        data = (line for line in response.iter_lines() if line.startswith("data:"))
        assert '"role"' in next(data) and '"content"' in next(data)  # the answer has begun
    reply = client.chat.completions.create(model="tiny-llava", messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=3)
    assert reply.choices[0].message.content is not None
    for _ in range(200):
        if engine.dropped > before:
            break
        threading.Event().wait(0.05)
    assert engine.dropped == before + 1


def test_api_key(tmp_path):
    model, processor = tiny.build_llava(seed=0)
    engine = Engine(model, processor)
    try:
        with running(build_app(ChatService(model, processor, "m", engine), api_key="s3cret")) as base:
            refused = openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0)
            with pytest.raises(openai.AuthenticationError, match="API key"):
                refused.models.list()
            allowed = openai.OpenAI(base_url=base + "/v1", api_key="s3cret", max_retries=0)
            assert allowed.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}],
                                                   max_tokens=2).choices[0].finish_reason in ("stop", "length")
    finally:
        engine.close()


def test_a_seed_makes_sampling_repeatable_and_runs_alone(served):
    *_, client, _, _ = served
    engine = served[2]
    body = dict(model="tiny-llava", messages=[{"role": "user", "content": "Name a shape."}], max_tokens=8,
                temperature=1.0, top_p=0.9)
    answers = [None] * 4

    def ask(i):
        answers[i] = client.chat.completions.create(seed=0, **body).choices[0].message.content

    before = len(engine.batches)
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(answers)) == 1  # seed 0, four times: one answer, each request sampled alone
    assert engine.batches[before:] == [1, 1, 1, 1]
