"""The argparse pieces every command's parser shares: the help formatter and sub-command parsers.

It sits below the CLI: `hf_llava.cli` routes to each package's `cli.py`, and those build their parsers with
these helpers, so no library module imports `hf_llava.cli`.
"""

import argparse
from typing import Optional


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default (`--help`); every parser of the CLI uses it."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or isinstance(action.default, bool):
            return action.help  # "(default: None/False)" says nothing for optional paths and switches
        return super()._get_help_string(action)


def add_parser(subparsers, name: str, help_text: str, **kwargs) -> argparse.ArgumentParser:
    """A sub-command parser with the CLI's help formatter (use it for nested sub-commands too)."""
    return subparsers.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter,
                                 **kwargs)


def add_quantization_arguments(parser: argparse.ArgumentParser) -> None:
    """--load-in, --bnb-quant-type, --bnb-double-quant: loading the language model in 4 or 8 bits (bitsandbytes)."""
    group = parser.add_argument_group("quantisation (bitsandbytes: pip install 'hf-llava[quant]')")
    group.add_argument("--load-in", choices=("4bit", "8bit"), default=None,
                       help="load the language model in 4-bit (NF4 / FP4) or 8-bit (LLM.int8); the vision tower, "
                            "the projector and the LM head keep their dtype (default: full precision)")
    group.add_argument("--bnb-quant-type", choices=("nf4", "fp4"), default=None,
                       help="the 4-bit data type (default: nf4, the QLoRA paper's NormalFloat)")
    group.add_argument("--bnb-double-quant", action=argparse.BooleanOptionalAction, default=None,
                       help="quantise the 4-bit quantisation constants too, ~0.4 bits a weight less (default: on with "
                            "--load-in 4bit, as the original LLaVA)")


def quantization_config(args: argparse.Namespace, device: Optional[str] = None):
    """The `BitsAndBytesConfig` the flags of `add_quantization_arguments` ask for (None without --load-in), its
    compute dtype chosen for `device`; errors name the flags."""
    load_in = getattr(args, "load_in", None)
    four_bit = [flag for flag, value in (("--bnb-quant-type", args.bnb_quant_type),
                                         ("--bnb-double-quant", args.bnb_double_quant)) if value is not None]
    if load_in != "4bit" and four_bit:
        raise ValueError(f"{' and '.join(four_bit)} set how --load-in 4bit quantises"
                         f"{'; 8-bit loading takes neither' if load_in else ''}: add --load-in 4bit or drop them.")
    if load_in is None:
        return None
    from ._loading import bitsandbytes_config

    return bitsandbytes_config(int(load_in[0]), args.bnb_quant_type, args.bnb_double_quant, device=device)


__all__ = ["HelpFormatter", "add_parser", "add_quantization_arguments", "quantization_config"]
