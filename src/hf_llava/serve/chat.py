"""`hf-llava chat [MODEL_DIR] --image photo.jpg`: a multi-turn chat in the terminal, the answer streamed as it is
generated, through the same engine as `hf-llava serve` (no server). `/reset` starts over, `/image PATH` attaches an
image to the next message, an empty line or end of input quits.
"""

import argparse
import sys

from .cli import add_model_arguments


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Declare the `chat` arguments on `parser` (a sub-parser of `hf-llava`)."""
    add_model_arguments(parser)
    parser.add_argument("--image", metavar="PATH", default=None, help="an image for the first message")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0: greedy)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling's probability mass")
    parser.add_argument("--max-tokens", type=int, default=512, help="longest answer, in tokens")
    parser.add_argument("--system", default=None, help="a system message (default: the chat template's)")


def chat(service, image=None, temperature: float = 0.0, top_p: float = 1.0, max_tokens: int = 512,
         system=None, read=input, write=sys.stdout.write) -> list:
    """The chat loop (what the command runs; `read` / `write` are the terminal's). Returns the conversation."""
    from ..processing.image_loading import load_image
    from .engine import Sampling

    sampling = Sampling(temperature=temperature, top_p=top_p)
    conversation = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    images, pending = [], image
    while True:
        try:
            line = read("USER: ").strip()
        except EOFError:
            line = ""
        if not line:
            return conversation
        if line == "/reset":
            conversation, images = conversation[:1] if system else [], []
            write("(conversation cleared)\n")
            continue
        if line.startswith("/image "):
            pending = line[len("/image "):].strip()
            write(f"(the next message comes with {pending})\n")
            continue
        content = [{"type": "text", "text": line}]
        if pending is not None:
            images.append(load_image(pending))  # a bad path: the error names it
            content.insert(0, {"type": "image"})
            pending = None
        conversation.append({"role": "user", "content": content})
        prepared = service.prepare(conversation, images, max_tokens)
        write("ASSISTANT: ")
        answer = []
        for event in service.engine.stream(prepared.features, prepared.max_tokens, sampling):
            if event.error is not None:
                raise event.error
            answer.append(event.delta)
            write(event.delta)
            if hasattr(sys.stdout, "flush"):
                sys.stdout.flush()
        write("\n")
        conversation.append({"role": "assistant", "content": [{"type": "text", "text": "".join(answer)}]})


def run(args: argparse.Namespace) -> int:
    from .cli import build_service, load
    from .messages import APIError

    from ..processing.image_loading import load_image

    image = load_image(args.image) if args.image else None  # a bad path is named before the model loads
    from .._cli_args import quantization_config

    model, processor, path = load(args.model_dir, args.backend, args.device, quantization_config(args, args.device))
    service = build_service(model, processor, path.name, max_batch_size=1, gather_ms=0)
    print(f"hf-llava chat: {path} (empty line to quit, /reset, /image PATH)", flush=True)
    try:
        chat(service, image, args.temperature, args.top_p, args.max_tokens, args.system)
    except APIError as error:  # e.g. the conversation outgrew the model's context
        raise ValueError(error.message) from error
    finally:  # the engine's thread may still be finishing its last step: let it end before Python does
        service.engine.close()
    return 0
