"""Prompt sets: one JSON file per type (`conversation.json`, `detail.json`, `complex.json`), replaceable.

A file holds `{"system": str, "examples": [{"context": {"captions": [...], "instances": [...]}, "answer":
str}], "instructions": [str, ...]}` (`instructions`, the "describe in detail" phrasings, for `detail` only).
The shipped files are in this package's `prompts/` folder; `--prompts DIR` replaces them with a folder
holding a file per requested type. Each few-shot answer must pass its type's parser, so a prompt can only
teach the format that the parser accepts.

The messages sent for one image: the system message, then each example as a user message (its rendered
context) and an assistant message (its answer), then the image's context as the last user message.
"""

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Optional

from .._io import digest
from ..data.symbolic import SymbolicImage, record_problem, render_context
from .parsers import ReplyRejected, parse_reply


@dataclass(frozen=True)
class PromptSet:
    """One type's prompt: system message, few-shot (context text, answer) pairs, and detail's instructions."""

    kind: str
    system: str
    examples: tuple = ()  # ((rendered context, answer), ...)
    instructions: tuple = ()
    source: str = ""
    digest: str = field(default="", compare=False)  # sha256 of the file: a resumed run must use the same prompts

    def messages(self, context: str) -> list[dict]:
        """The chat messages that ask the teacher about the image whose rendered context is `context`."""
        messages = [{"role": "system", "content": self.system}]
        for example_context, answer in self.examples:
            messages += [{"role": "user", "content": example_context}, {"role": "assistant", "content": answer}]
        return messages + [{"role": "user", "content": context}]


def _problem(kind: str, data) -> Optional[str]:
    if not isinstance(data, dict) or not isinstance(data.get("system"), str) or not data["system"].strip():
        return "expected an object with a non-empty 'system' string"
    examples = data.get("examples", [])
    if not isinstance(examples, list):
        return "'examples' must be a list of {context, answer}"
    for j, example in enumerate(examples):
        if not isinstance(example, dict) or not isinstance(example.get("answer"), str):
            return f"example {j}: expected {{'context': {{captions, instances}}, 'answer': str}}"
        problem = record_problem({"id": "example", "image": "example", **(example.get("context") or {})})
        if problem:
            return f"example {j}: context: {problem}"
        try:
            parse_reply(kind, example["answer"])
        except ReplyRejected as rejected:
            return f"example {j}: the answer is not in the reply format the {kind} parser accepts ({rejected})"
    if kind == "detail":
        instructions = data.get("instructions")
        if not isinstance(instructions, list) or not instructions or not all(
                isinstance(i, str) and i.strip() for i in instructions):
            return "'instructions' must be a non-empty list of 'describe in detail' phrasings"
    return None


def load_prompt_set(kind: str, prompts: Optional[str] = None) -> PromptSet:
    """The `kind` prompt set from folder `prompts` (default: the shipped files); errors name the file."""
    if prompts is None:
        text = resources.files(__package__).joinpath("prompts", f"{kind}.json").read_text(encoding="utf-8")
        source = f"hf_llava/datagen/prompts/{kind}.json"
    else:
        source = os.path.join(os.fspath(prompts), f"{kind}.json")
        if not os.path.isdir(prompts):
            raise FileNotFoundError(f"prompts={prompts}: no such folder; pass a folder with a <type>.json per type.")
        if not os.path.isfile(source):
            raise FileNotFoundError(f"prompts={prompts}: no {kind}.json in it; copy the shipped "
                                    f"hf_llava/datagen/prompts/{kind}.json there and edit it.")
        with open(source, encoding="utf-8") as f:
            text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{source}: not valid JSON (line {err.lineno}: {err.msg}).") from None
    problem = _problem(kind, data)
    if problem:
        raise ValueError(f"{source}: {problem}.")
    examples = tuple(
        (render_context(SymbolicImage("example", "example", ex["context"].get("captions", []),
                                      ex["context"].get("instances", []))), ex["answer"].strip())
        for ex in data.get("examples", [])
    )
    return PromptSet(kind, data["system"].strip(), examples, tuple(data.get("instructions", ())), source,
                     digest(text))


def load_prompts(types: list[str], prompts: Optional[str] = None) -> dict[str, PromptSet]:
    """`{type: PromptSet}` for each of `types` (checked with `check_types` first)."""
    return {kind: load_prompt_set(kind, prompts) for kind in types}


__all__ = ["PromptSet", "load_prompt_set", "load_prompts"]
