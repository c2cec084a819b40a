"""`hf-llava convert`: the arguments of the conversions and the call into `hf_llava.conversion`."""

import argparse
import os

_ROUTES = {
    ("original", "hf-llava"): "convert_original_to_hf_llava",
    ("llava-hf", "hf-llava"): "convert_llava_hf_to_hf_llava",
    ("hf-llava", "llava-hf"): "convert_hf_llava_to_llava_hf",
}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Declare the `convert` sub-command's arguments."""
    parser.add_argument("--from", dest="source_format", required=True, choices=["original", "llava-hf", "hf-llava"],
                        help="layout of SRC: original (haotian-liu/LLaVA 1.5 / NeXT), llava-hf (transformers' llava "
                        "or llava_next, told by its config) or hf-llava")
    parser.add_argument("--to", dest="target_format", required=True, choices=["hf-llava", "llava-hf"],
                        help="layout to write at DST (llava-hf: llava_next for an anyres model, else llava)")
    parser.add_argument("src", metavar="SRC", help="source checkpoint folder (or an mm_projector.bin)")
    parser.add_argument("dst", metavar="DST", help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--vision-tower", help="original: local CLIP folder (default: the config's mm_vision_tower)")
    parser.add_argument("--model-base", help="original: the LM folder under a stage-1 projector or a LoRA adapter")
    parser.add_argument("--chat-template", help="a name from hf_llava.CHAT_TEMPLATES or a .jinja file (default: "
                        "vicuna_v1 for original, the source's template for llava-hf)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest output shard")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing DST (only once the new one is complete)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    # refused with its reason (not an unknown flag): conversion reads and writes full-precision weights
    parser.add_argument("--load-in", help=argparse.SUPPRESS)


def _read_template(value: str) -> str:
    """`--chat-template`: a `.jinja` file's text, or a template name checked by the one resolver."""
    from ..processing.chat_templates import get_chat_template

    if value.endswith(".jinja"):
        if not os.path.isfile(value):
            raise FileNotFoundError(f"chat_template={value}: no such file; pass a .jinja file or a template name.")
        with open(value, encoding="utf-8") as f:
            return get_chat_template(f.read())
    get_chat_template(value)  # a typo fails here, listing the names
    return value


def run(args: argparse.Namespace) -> int:
    """Call the conversion named by --from/--to; errors raise (the CLI prints them in two lines)."""
    if args.load_in is not None:
        raise ValueError(f"--load-in {args.load_in}: hf-llava convert reads and writes full-precision weights; "
                         "convert the full-precision folder, then load the result with --load-in (train, eval, "
                         "serve, chat).")
    route = _ROUTES.get((args.source_format, args.target_format))
    if route is None:
        raise ValueError(f"--from {args.source_format} --to {args.target_format} is not a conversion; expected one "
                         f"of {', '.join(f'{a} -> {b}' for a, b in _ROUTES)}.")
    template = _read_template(args.chat_template) if args.chat_template else None
    if route != "convert_original_to_hf_llava" and (args.vision_tower or args.model_base):
        raise ValueError("--vision-tower / --model-base apply to --from original only.")
    if route == "convert_hf_llava_to_llava_hf" and template:
        raise ValueError("--chat-template does not apply to --to llava-hf (the source's is kept).")
    from hf_llava import conversion

    kwargs = {"max_shard_size": args.max_shard_size, "overwrite": args.overwrite, "progress": not args.no_progress}
    if route == "convert_original_to_hf_llava":
        kwargs.update(vision_tower=args.vision_tower, model_base=args.model_base, chat_template=template or "vicuna_v1")
    elif route == "convert_llava_hf_to_hf_llava":
        kwargs["chat_template"] = template
    out = getattr(conversion, route)(args.src, args.dst, **kwargs)
    print(f"Wrote {out}")
    return 0
