"""A real chat-completions server on 127.0.0.1 (stdlib, in a thread) with scripted faults, and symbolic inputs.

The server answers each request in the reply format of the request's type (known from its system message),
quoting the image's first caption, unless a fault is scripted for a marker found in the request: 429 and
500 (with a short Retry-After, as servers send), slow (longer than the client's timeout), a malformed
body, a 401 quoting the key, a refusal, an empty reply, free text, a reply cut at the token limit.
Replies carry no coordinates, so the parsers accept them.
"""

import json
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hf_llava.datagen import TYPES, load_prompts

OK_REPLIES = {
    "conversation": "Question: What is shown here?\nAnswer: {caption}\nQuestion: Is it daytime?\nAnswer: Yes, the "
                    "light suggests it is daytime.",
    "complex": "Question: Why might this scene be happening?\nAnswer: Looking closely: {caption} That suggests an "
               "ordinary day, reasoned step by step from what is visible.",
    "detail": "{caption} The scene is calm and ordinary, with every object in its place, and the picture shows the "
              "whole setting clearly from a normal viewpoint.",
}
TEXT_FAULTS = {"refuse": "I'm sorry, but I can't help with that.", "empty": "", "freetext": "Nice picture."}


class TeacherServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # slow handlers may still sleep when a test ends

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v1"
        self.kinds = {ps.system: kind for kind, ps in load_prompts(list(TYPES)).items()}
        self.script: dict[str, list[str]] = {}  # marker in the request -> faults of its first attempts
        self.delay = 0.0  # seconds before every answer
        self.slow_seconds = 6.0  # well past the 2 s client timeouts the tests use, which a loaded machine still meets
        self.lock = threading.Lock()
        self.attempts: dict[tuple, int] = {}
        self.requests: list[dict] = []  # every request: its auth header, kind, marker, behaviour
        self.answered = 0  # 200 replies fully written
        self.in_flight = self.max_in_flight = 0

    def handle_error(self, request, client_address):  # a client that gave up (timeout, SIGKILL) is expected
        pass

    def kind_of(self, messages: list[dict]) -> str:
        system = messages[0]["content"]
        found = re.search(r"KIND=(\w+)", system)  # custom prompt files in tests name their type
        return self.kinds.get(system) or (found.group(1) if found else "unknown")

    def behaviour(self, kind: str, query: str) -> tuple[str, str]:
        marker = next((m for m in self.script if m in query), "")
        with self.lock:
            attempt = self.attempts.get((marker, kind), 0)
            self.attempts[(marker, kind)] = attempt + 1
        faults = self.script.get(marker, [])
        return marker, faults[attempt] if attempt < len(faults) else "ok"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict = None):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        server: TeacherServer = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        messages = body["messages"]
        kind, query = server.kind_of(messages), messages[-1]["content"]
        marker, behaviour = server.behaviour(kind, query)
        with server.lock:
            server.requests.append({"auth": self.headers.get("Authorization"), "kind": kind, "marker": marker,
                                    "behaviour": behaviour, "messages": messages})
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            time.sleep(server.delay + (server.slow_seconds if behaviour == "slow" else 0))
            if behaviour in ("429", "500"):
                error = json.dumps({"error": {"message": f"scripted {behaviour}", "type": "server_error"}}).encode()
                return self._send(int(behaviour), error, {"retry-after-ms": "5"})
            if behaviour == "echo401":  # a server that quotes the credentials it refused
                error = json.dumps({"error": {"message": f"bad key {self.headers.get('Authorization')}"}}).encode()
                return self._send(401, error)
            if behaviour == "malformed":
                return self._send(200, b'{"id": "chatcmpl-1", "choices": [')
            caption = query.split("\n")[1] if query.startswith("Captions:") else "A picture."
            text = TEXT_FAULTS.get(behaviour, OK_REPLIES.get(kind, "?").format(caption=caption))
            finish = "length" if behaviour == "truncated" else "stop"  # well-formed text, cut at max_tokens
            reply = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "finish_reason": finish,
                                  "message": {"role": "assistant", "content": text}}]}
            self._send(200, json.dumps(reply).encode())
            with server.lock:
                server.answered += 1
        finally:
            with server.lock:
                server.in_flight -= 1


@pytest.fixture()
def teacher_server():
    server = TeacherServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture()
def closed_url():
    """The URL of a port on 127.0.0.1 that nothing listens on (bound, then closed): a server that is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def without_openai(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`hf-llava ARGV` in a fresh interpreter where `import openai` fails, as on an install without [teacher]."""
    code = ("import sys\nsys.modules['openai'] = None  # importing it now raises ImportError\n"
            "from hf_llava.cli import main\nsys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=timeout)


def symbolic_records(n: int, markers: dict = None) -> list[dict]:
    """`n` symbolic images; `markers` {index: word} puts a fault marker into an image's first caption."""
    records = []
    for i in range(n):
        marker = (markers or {}).get(i, "")
        records.append({
            "id": f"img{i:03d}", "image": f"coco/img{i:03d}.jpg",
            "captions": [f"A cat number {i} sleeps on a sofa{' ' + marker if marker else ''}.",
                         "A living room with a sofa and a lamp."],
            "instances": [{"category": "cat", "bbox": [0.1, 0.25, 0.5, 0.75]},
                          {"category": "couch", "bbox": [0.0, 0.4, 1.0, 1.0]}],
        })
    return records


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.fixture()
def caps_jsonl(tmp_path):
    """Writes `symbolic_records(n, markers)` to caps.jsonl and returns its path."""
    return lambda n, markers=None: write_jsonl(tmp_path / "caps.jsonl", symbolic_records(n, markers))
