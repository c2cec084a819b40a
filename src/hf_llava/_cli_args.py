"""The argparse pieces every command's parser shares: the help formatter and sub-command parsers.

It sits below the CLI: `hf_llava.cli` routes to each package's `cli.py`, and those build their parsers with
these helpers, so no library module imports `hf_llava.cli`.
"""

import argparse
import inspect


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


def add_teacher_arguments(group, *, required: bool = False, role: str = "teacher") -> None:
    """The OpenAI-compatible server's flags (`--base-url --concurrency --timeout --max-retries`) on `group`
    (a parser or an argument group), with `OpenAITeacher`'s own defaults; `teacher_settings` reads them back."""
    from .teachers import OpenAITeacher  # light: the client (openai) is imported when a teacher is made

    defaults = {name: p.default for name, p in inspect.signature(OpenAITeacher).parameters.items()}
    group.add_argument("--base-url", metavar="URL", required=required,
                       help="OpenAI-compatible server, e.g. http://localhost:8000/v1 (vLLM, SGLang) or "
                       "https://api.openai.com/v1; the key is read from OPENAI_API_KEY")
    group.add_argument("--concurrency", type=int, default=defaults["concurrency"], help=f"{role} requests in flight")
    group.add_argument("--timeout", type=float, default=defaults["timeout"],
                       help=f"seconds per {role} request attempt")
    group.add_argument("--max-retries", type=int, default=defaults["max_retries"],
                       help="client retries on 429 / 5xx / timeouts, with exponential backoff")


def teacher_settings(args: argparse.Namespace) -> dict:
    """The `OpenAITeacher` keyword arguments that `add_teacher_arguments`' flags set."""
    return {"concurrency": args.concurrency, "timeout": args.timeout, "max_retries": args.max_retries}


__all__ = ["HelpFormatter", "add_parser", "add_teacher_arguments", "teacher_settings"]
