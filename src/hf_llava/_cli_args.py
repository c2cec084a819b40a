"""The argparse pieces every command's parser shares: the help formatter and sub-command parsers.

It sits below the CLI: `hf_llava.cli` routes to each package's `cli.py`, and those build their parsers with
these helpers, so no library module imports `hf_llava.cli`.
"""

import argparse


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


__all__ = ["HelpFormatter", "add_parser"]
