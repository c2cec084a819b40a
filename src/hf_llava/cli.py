"""`hf-llava <command>`: parses arguments and calls the library; nothing else lives here.

Each command's arguments are declared next to the library function it calls, in a module with
`configure_parser(parser)` and `run(args) -> int`; this file only routes to them, importing the one
that is used (so `--help` answers at once and `hf-llava demo` never imports TRL or ONNX Runtime).

Expected errors (bad paths, bad data, bad flags, unreadable weights, a missing extra) are printed as
one or two lines naming the input and the fix, in flag spelling, with exit code 2; `--debug` shows
the full traceback. Anything else is a bug and keeps its traceback.
"""

import argparse
import importlib
import re
import sys
from typing import Optional

from ._cli_args import HelpFormatter, add_parser

COMMANDS = {
    "demo": ("hf_llava.demo", "the paper end to end, offline: data, stage 1, stage 2, the ablation, VQA scores, ONNX"),
    "train": ("hf_llava.trainers.cli", "run LLaVA's stage 1 (feature alignment) or stage 2 (instruction tuning)"),
    "convert": ("hf_llava.conversion.cli", "convert original LLaVA / llava-hf checkpoints to and from hf-llava"),
    "export-onnx": ("hf_llava.onnx.cli", "export to ONNX (vision encoder, embeddings, decoder) and validate"),
    "datagen": ("hf_llava.datagen.cli",
                "write LLaVA instruction data from captions and boxes with a text-only teacher"),
    "eval": ("hf_llava.eval.cli", "evaluate as the paper does: LLaVA-Bench (judge), multiple choice, VQA accuracy"),
    "serve": ("hf_llava.serve.cli", "an OpenAI-compatible API (streaming, batched) and a chat page over one model"),
    "chat": ("hf_llava.serve.chat", "chat with a model in the terminal: streaming, multi-turn, with an image"),
}
EXIT_USAGE = 2  # what argparse returns for bad flags; used for every expected error
_MAX_LINES = 2


def build_parser(argv: Optional[list] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-llava", description="LLaVA on the Hugging Face stack.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in (argv or []) if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        command = add_parser(sub, name, help_text)
        if name == wanted:  # import only the module of the command that runs
            importlib.import_module(module).configure_parser(command)
    return parser


def _expected_errors() -> tuple:
    from ._extras import MissingExtraError

    return (ValueError, OSError, MissingExtraError)


def _flag_spelling(message: str, parser: argparse.ArgumentParser) -> str:
    """Rewrite library spellings (`bad_image_policy='skip'`, `overwrite=True`) into the command's flags."""
    actions = [a for a in parser._actions if a.option_strings]
    for sub in parser._actions:  # nested sub-commands (train stage1 / stage2)
        if isinstance(sub, argparse._SubParsersAction):
            for child in sub.choices.values():
                actions += [a for a in child._actions if a.option_strings]
    for action in actions:
        flag = max(action.option_strings, key=len)
        if isinstance(action, argparse._StoreTrueAction):
            message = re.sub(rf"`?\b{action.dest}=True\b`?", flag, message)
        elif isinstance(action, argparse._StoreFalseAction):
            message = re.sub(rf"`?\b{action.dest}=False\b`?", flag, message)
        else:
            message = re.sub(rf"`?\b{action.dest}=(['\"]?)([^'\"\s,;)`]+)\1`?", rf"{flag} \2", message)
    return message


def _report(command: str, error: BaseException, parser: argparse.ArgumentParser) -> None:
    lines = _flag_spelling(str(error), parser).strip().splitlines() or [type(error).__name__]
    shown = lines[:_MAX_LINES]
    if len(lines) > _MAX_LINES:
        shown[-1] += f"  (+{len(lines) - _MAX_LINES} more lines with --debug)"
    print(f"hf-llava {command}: error: " + "\n  ".join(shown), file=sys.stderr)


def main(argv: Optional[list] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    command_parser = parser._subparsers._group_actions[0].choices[args.command]
    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
    except KeyboardInterrupt:
        print(f"hf-llava {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug or not isinstance(error, _expected_errors()):
            raise
        _report(args.command, error, command_parser)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
