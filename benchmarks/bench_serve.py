"""Serving throughput: `hf-llava serve`'s batching engine (`--max-batch-size 8`) vs one request at a time
(`--max-batch-size 1`), on the real server and the `openai` client.

Starts two servers in this process on 127.0.0.1 over the same model (the demo's shipped chat model when it is
installed with its weights, else a random ~48M-parameter LLaVA built with `hf_llava.tiny.build_llava`: a 6-layer
CLIP-like tower on 112px images with 14px patches, 64 visual tokens, and a 10-layer Llama of width 512). For each
concurrency (1, 4, 8, 16 clients: threads, each with its own `openai` client) every client sends
`--requests-per-client` image + question requests one after the other (greedy, `max_tokens` fixed); the two servers
take their turns at each concurrency, so that load from elsewhere on the machine falls on both alike. Measured:
completion tokens/s (the tokens `usage` reports, over the wall time of the whole round), requests/s, p50 / p95
request latency and the mean batch the engine ran. `ratio` = batched tokens/s / one-at-a-time tokens/s (target:
>= 3 at 8 clients on CPU). Beside it, what batching can give at most on this model and machine: `model.generate`
in-process, without a server, on `--max-batch-size` prompts at once vs one (tokens/s, every row `--max-tokens`
long). The clients share this process (and its GIL) with the servers: their own Python work counts against both
modes alike. Writes a JSON report and prints a table.

    python benchmarks/bench_serve.py [--clients 1 4 8 16] [--requests-per-client 6] [--max-tokens 32]
                                     [--threads 1] [--model PATH|random] [--report benchmarks/reports/serve.json]
"""

import argparse
import base64
import io
import os
import platform
import statistics
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import openai
import torch
import transformers

from hf_llava import tiny
from hf_llava._io import write_json_atomic
from hf_llava.onnx.loading import load_model
from hf_llava.serve.app import ChatService, build_app, running
from hf_llava.serve.engine import Engine
from hf_llava.world.parts import chat_model_path

TARGET = 3.0  # batched / one-at-a-time tokens/s at 8 clients
QUESTIONS = ["Describe the image in detail.", "What is shown in the image? Describe every shape and its colour.",
             "Where is the circle, and what is around it?", "Tell me everything you see in this picture."]


def image_question(image, question: str) -> list:
    """One user message: `image` as a PNG data: URL, then `question`."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": question}]}]


def served_model(path: str) -> tuple:
    """(model, processor, what it is): the folder at `path` when it holds weights, else (or for `random`) the random
    model."""
    if path != "random" and any(Path(path).glob("*.safetensors")):
        model, processor = load_model(path, device="cpu")
        return model, processor, ("the shipped chat model" if path == chat_model_path() else str(path))
    model, processor = tiny.build_llava(vision_hidden_size=256, vision_layers=6, image_size=112, patch_size=14,
                                        hidden_size=512, num_layers=10, num_heads=8)
    return model, processor, "random LLaVA (hf_llava.tiny.build_llava)"


def percentile(values: list, q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run_round(client_factory, name: str, clients: int, conversations: list, max_tokens: int) -> dict:
    """`clients` threads, each sending its share of `conversations` one after the other; the round's figures."""
    latencies, tokens, errors = [], [], []
    lock = threading.Lock()

    def client(index: int) -> None:
        api = client_factory()
        for k in range(index, len(conversations), clients):
            start = time.perf_counter()
            try:
                reply = api.chat.completions.create(model=name, messages=conversations[k], max_tokens=max_tokens,
                                                    temperature=0)
            except openai.OpenAIError as error:  # counted, shown in the report
                with lock:
                    errors.append(repr(error))
                continue
            with lock:
                latencies.append(time.perf_counter() - start)
                tokens.append(reply.usage.completion_tokens)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed, e.g. {errors[0]}")
    return {"requests": len(latencies), "completion_tokens": sum(tokens), "wall_s": round(wall, 3),
            "mean_completion_tokens": round(sum(tokens) / len(tokens), 1),
            "tokens_per_s": round(sum(tokens) / wall, 2), "requests_per_s": round(len(latencies) / wall, 3),
            "latency_p50_ms": round(1e3 * percentile(latencies, 50), 1),
            "latency_p95_ms": round(1e3 * percentile(latencies, 95), 1)}


def in_process_tokens_per_s(model, processor, images: list, max_tokens: int, repeats: int = 2) -> float:
    """`model.generate` with no server on `images`, one prompt each with the questions in turn (as the clients ask
    them), left-padded into one batch: tokens/s, the best of `repeats`, every row made to give `max_tokens` tokens."""
    prompts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                               "text": QUESTIONS[i % len(QUESTIONS)]}]}], add_generation_prompt=True)
               for i in range(len(images))]
    inputs = processor(images=images, text=prompts, padding=True, padding_side="left", return_tensors="pt")
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            model.generate(**inputs, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                           pad_token_id=processor.tokenizer.pad_token_id)
            best = min(best, time.perf_counter() - start)
    return len(images) * max_tokens / best


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="a model folder to serve, or `random` for the random ~48M-parameter LLaVA (default: the "
                             "shipped chat model if installed with its weights, else the random one)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--requests-per-client", type=int, default=None,
                        help="requests each client sends, one after the other (default: 6; 2 for the random model, "
                             "whose answers take ~10x longer)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=8, help="the batched server's --max-batch-size")
    parser.add_argument("--gather-ms", type=float, default=20.0, help="both servers' --gather-ms")
    parser.add_argument("--threads", type=int, default=1,
                        help="PyTorch intra-op threads (default 1: the server's own threads, and here its clients', "
                             "need a core too; on 2 cores, 2 intra-op threads wait on each other and serve slower)")
    parser.add_argument("--report", default=str(Path(__file__).parent / "reports" / "serve.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    load = os.getloadavg()[0]
    if load > 2:
        print(f"warning: load average {load:.1f}: other work on this machine makes the figures noisy")
    model, processor, what = served_model(args.model if args.model is not None else chat_model_path())
    if args.requests_per_client is None:
        args.requests_per_client = 2 if what.startswith("random") else 6
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {what}, {params / 1e6:.1f}M parameters, {args.threads} threads")
    size = model.config.vision_config.image_size
    most = max(args.clients) * args.requests_per_client
    conversations = [image_question(tiny.demo_image(size + 8 * (i % 5), seed=i), QUESTIONS[i % len(QUESTIONS)])
                     for i in range(most)]  # encoded once, outside the timings
    images = [tiny.demo_image(size, seed=i) for i in range(args.max_batch_size)]
    alone = in_process_tokens_per_s(model, processor, images[:1], args.max_tokens)
    together = in_process_tokens_per_s(model, processor, images, args.max_tokens)
    in_process = {"one_tokens_per_s": round(alone, 2), "batch_tokens_per_s": round(together, 2),
                  "ratio": round(together / alone, 3)}
    print(f"model.generate without a server: 1 prompt {alone:.1f} tok/s, {len(images)} prompts together "
          f"{together:.1f} tok/s: {together / alone:.2f}x (what batching can give at most)", flush=True)
    modes = {"batched": args.max_batch_size, "one_at_a_time": 1}
    engines = {mode: Engine(model, processor, max_batch_size=b, gather_seconds=args.gather_ms / 1000)
               for mode, b in modes.items()}
    results = {}
    with ExitStack() as stack:
        bases = {mode: stack.enter_context(running(build_app(ChatService(model, processor, "bench", engine))))
                 for mode, engine in engines.items()}
        factories = {mode: (lambda base=base: openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0,
                                                            timeout=600))
                     for mode, base in bases.items()}
        for mode in modes:  # warm-up: the first batch pays for one-off allocations
            run_round(factories[mode], "bench", 2, conversations[:2], args.max_tokens)
        for clients in args.clients:
            row = {}
            for mode, engine in engines.items():
                before = len(engine.batches)
                row[mode] = run_round(factories[mode], "bench", clients,
                                      conversations[: clients * args.requests_per_client], args.max_tokens)
                row[mode]["mean_batch"] = round(statistics.mean(engine.batches[before:]), 2)
            row["ratio"] = round(row["batched"]["tokens_per_s"] / row["one_at_a_time"]["tokens_per_s"], 3)
            results[str(clients)] = row
            print(f"{clients:>3} clients: batched {row['batched']['tokens_per_s']:7.1f} tok/s "
                  f"(mean batch {row['batched']['mean_batch']:.1f}), one at a time "
                  f"{row['one_at_a_time']['tokens_per_s']:7.1f} tok/s: {row['ratio']:.2f}x", flush=True)
    for engine in engines.values():
        engine.close()

    print(f"\n{'clients':>7} | {'mode':<13} | {'tok/s':>7} | {'req/s':>6} | {'p50 ms':>8} | {'p95 ms':>8} | "
          f"{'batch':>5} | {'ratio':>5}")
    for clients, row in results.items():
        for mode in modes:
            r = row[mode]
            ratio = f"{row['ratio']:.2f}" if mode == "batched" else ""
            print(f"{clients:>7} | {mode:<13} | {r['tokens_per_s']:>7.1f} | {r['requests_per_s']:>6.2f} | "
                  f"{r['latency_p50_ms']:>8.0f} | {r['latency_p95_ms']:>8.0f} | {r['mean_batch']:>5.1f} | {ratio:>5}")
    at_target = results.get("8", {}).get("ratio")
    if at_target is not None:
        print(f"\n8 clients: batched {at_target:.2f}x one at a time "
              f"({'meets' if at_target >= TARGET else 'BELOW'} the {TARGET}x target)")
    report = {
        "benchmark": "serve", "model": what, "parameters": params,
        "image_tokens": int(model.config.num_image_tokens), "max_tokens": args.max_tokens,
        "requests_per_client": args.requests_per_client, "max_batch_size": args.max_batch_size,
        "gather_ms": args.gather_ms, "threads": args.threads, "cpu_count": os.cpu_count(),
        "load_average_start_end": [round(load, 2), round(os.getloadavg()[0], 2)], "in_process_generate": in_process,
        "results": results, "target_ratio_at_8_clients": TARGET,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
    }
    write_json_atomic(args.report, report)
    print(f"report written to {args.report}")
    return report


if __name__ == "__main__":
    main()
