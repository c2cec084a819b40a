"""`hf-llava <command>`: parses arguments and calls the library; nothing else lives here.

Each command's arguments are declared next to the library function it calls, in a module with
`configure_parser(parser)` and `run(args) -> int`; this file only routes to them, importing the one
that is used (so `hf-llava demo` never imports TRL or ONNX Runtime).
"""

import argparse
import importlib
import sys
from typing import Optional

COMMANDS = {
    "demo": ("hf_llava.demo", "build a small LLaVA offline and answer a question about a generated image"),
    "train": ("hf_llava.trainers.cli", "run LLaVA's stage 1 (feature alignment) or stage 2 (instruction tuning)"),
    "convert": ("hf_llava.conversion.cli", "convert original LLaVA / llava-hf checkpoints to and from hf-llava"),
    "export-onnx": ("hf_llava.onnx.cli", "export to ONNX (vision encoder, embeddings, decoder) and validate"),
}


def build_parser(argv: Optional[list] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-llava", description="LLaVA on the Hugging Face stack.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in (argv or []) if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:  # import only the module of the command that runs
            importlib.import_module(module).configure_parser(command)
    return parser


def main(argv: Optional[list] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
