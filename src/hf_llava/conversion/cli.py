"""`hf-llava convert`: the arguments of the conversions and the call into `hf_llava.conversion`."""

import argparse
import sys

_ROUTES = {
    ("original", "hf-llava"): "convert_original_to_hf_llava",
    ("llava-hf", "hf-llava"): "convert_llava_hf_to_hf_llava",
    ("hf-llava", "llava-hf"): "convert_hf_llava_to_llava_hf",
}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Declare the `convert` sub-command's arguments."""
    parser.add_argument("--from", dest="source_format", required=True, choices=["original", "llava-hf", "hf-llava"],
                        help="layout of SRC: original (haotian-liu/LLaVA), llava-hf (transformers) or hf-llava")
    parser.add_argument("--to", dest="target_format", required=True, choices=["hf-llava", "llava-hf"],
                        help="layout to write at DST")
    parser.add_argument("src", metavar="SRC", help="source checkpoint folder (or an mm_projector.bin)")
    parser.add_argument("dst", metavar="DST", help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--vision-tower", help="original: local CLIP folder (default: the config's mm_vision_tower)")
    parser.add_argument("--model-base", help="original: the LM folder under a stage-1 projector or a LoRA adapter")
    parser.add_argument("--chat-template", help="name from hf_llava.CHAT_TEMPLATES or a .jinja file "
                        "(default: vicuna_v1 "
                        "for original, the source's template for llava-hf)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest output shard (default 5GB)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing DST (only once the new one is complete)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Call the conversion named by --from/--to; print a `ConversionError` and return 1 instead of a traceback."""
    from hf_llava import conversion

    route = _ROUTES.get((args.source_format, args.target_format))
    if route is None:
        print(f"hf-llava convert: --from {args.source_format} --to {args.target_format} is not a conversion; "
              f"expected one of {', '.join(f'{a} -> {b}' for a, b in _ROUTES)}.", file=sys.stderr)
        return 2
    kwargs = {"max_shard_size": args.max_shard_size, "overwrite": args.overwrite, "progress": not args.no_progress}
    template = args.chat_template
    if template and template.endswith(".jinja"):
        with open(template, encoding="utf-8") as f:
            template = f.read()
    if route == "convert_original_to_hf_llava":
        kwargs.update(
            vision_tower=args.vision_tower, model_base=args.model_base, chat_template=template or "vicuna_v1"
        )
    elif args.vision_tower or args.model_base:
        print("hf-llava convert: --vision-tower / --model-base apply to --from original only.", file=sys.stderr)
        return 2
    elif route == "convert_llava_hf_to_hf_llava":
        kwargs["chat_template"] = template
    elif template:
        print("hf-llava convert: --chat-template does not apply to --to llava-hf (the source's is kept).",
              file=sys.stderr)
        return 2
    try:
        out = getattr(conversion, route)(args.src, args.dst, **kwargs)
    except (conversion.ConversionError, FileExistsError) as error:
        print(f"hf-llava convert: {error}", file=sys.stderr)
        return 1
    print(f"Wrote {out}")
    return 0
