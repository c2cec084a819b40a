"""A real judge server on 127.0.0.1 (datagen's test server, answering reviews), saved tiny LLaVA and LLaVA-NeXT
folders, bench inputs.

The judge answers each review request with the text scripted for the marker found in it (`reviews`), after
the faults scripted for its first attempts (`script`, as in datagen's server: "429", or a literal reply
such as an unparseable review).
"""

import json
import time

import pytest
import torch

from hf_llava import LlavaConfig, LlavaForConditionalGeneration, tiny
from tests.datagen import conftest as datagen
from tests.datagen.conftest import _Handler, write_jsonl

# datagen's fixtures that eval's tests use too: its OpenAI-compatible server, and a port where none listens.
teacher_server, closed_url = datagen.teacher_server, datagen.closed_url

# Markers in the questions tell the judge which review to give.
BENCH = [  # (marker, category, image)
    ("[m:alpha]", "conv", "one.png"),
    ("[m:bravo]", "detail", "one.png"),
    ("[m:charlie]", "complex", "two.png"),
    ("[m:delta]", "conv", "two.png"),
    ("[m:echo]", "complex", "one.png"),
]


class _JudgeHandler(_Handler):
    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        query = body["messages"][-1]["content"]
        marker = next((m for m in server.reviews if m in query), "")
        _, behaviour = server.behaviour("judge", query)
        with server.lock:
            server.requests.append({"auth": self.headers.get("Authorization"), "marker": marker,
                                    "behaviour": behaviour, "messages": body["messages"]})
        if server.delay:
            time.sleep(server.delay)
        if behaviour == "429":
            error = json.dumps({"error": {"message": "scripted 429", "type": "rate_limit"}}).encode()
            return self._send(429, error, {"retry-after-ms": "5"})
        text = server.reviews.get(marker, "?") if behaviour == "ok" else behaviour
        reply = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                 "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}]}
        self._send(200, json.dumps(reply).encode())


@pytest.fixture()
def judge_server(teacher_server):
    """datagen's test server, answering as a judge: `reviews` maps a marker to the review text it gives."""
    teacher_server.RequestHandlerClass = _JudgeHandler
    teacher_server.reviews = {}
    return teacher_server


@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory):
    """A tiny random LLaVA and its processor saved with save_pretrained (answers are noise)."""
    model, processor = tiny.build_llava()
    path = tmp_path_factory.mktemp("eval-model") / "tiny-llava"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def next_dir(tmp_path_factory, tokenizer, next_config):
    """A tiny random LLaVA-NeXT (the `next_config` AnyRes model) and its processor saved with save_pretrained.

    Its LM is drawn with a wider initializer (std 0.2, not 0.02): at 0.02 the random LM answers every image with the
    same words, so an answer given for the wrong image would go unnoticed; at 0.2 each image gets its own answer.
    """
    fields = next_config.to_dict()
    fields["text_config"]["initializer_range"] = 0.2
    config = LlavaConfig.from_dict(fields)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    path = tmp_path_factory.mktemp("eval-next") / "tiny-llava-next"
    model.save_pretrained(path)
    tiny.build_processor(tokenizer, config).save_pretrained(path)
    return path


@pytest.fixture()
def images_dir(tmp_path):
    """A folder with two generated pictures, one.png and two.png."""
    folder = tmp_path / "images"
    folder.mkdir()
    tiny.demo_image(64, seed=0).save(folder / "one.png")
    tiny.demo_image(48, seed=1).save(folder / "two.png")
    return folder


@pytest.fixture()
def bench(tmp_path, images_dir):
    """LLaVA-Bench inputs in the original layout: two images, five questions, references, both context layouts."""
    images = images_dir
    questions = [{"question_id": i, "image": image, "text": f"What is in the picture? {marker}", "category": category}
                 for i, (marker, category, image) in enumerate(BENCH)]
    references = [{"question_id": i, "text": f"A reference answer number {i}.", "model_id": "gpt-4"}
                  for i in range(len(BENCH))]
    contexts = [
        {"id": "1", "image": "one.png", "captions": ["A red square and a green disc."],
         "instances": [{"category": "square", "bbox": [0.1, 0.25, 0.33, 0.5]}]},
        {"image": "two.png", "caption": "A photo taken in the wild: a blue wall with a red sign."},
    ]
    return {
        "images": images,
        "questions": write_jsonl(tmp_path / "questions.jsonl", questions),
        "references": write_jsonl(tmp_path / "references.jsonl", references),
        "context": write_jsonl(tmp_path / "context.jsonl", contexts),
        "records": questions,
    }
