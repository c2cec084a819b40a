"""The LLaVA conversation formats as Jinja chat templates.

Each template renders exactly what the original LLaVA `conversation.py` renders for the same turns
(`Conversation.get_prompt`), for transformers' message format:
`[{"role": "system"|"user"|"assistant", "content": str | [{"type": "image"}, {"type": "text", "text": ...}]}]`.

In a user turn, an image part before the text renders as `<image>\n` + text, after it as
text + `\n<image>`. A leading `system` message replaces the template's default system prompt.
`add_generation_prompt=True` appends what the original appends for an open assistant turn.

transformers renders chat templates with `trim_blocks` and `lstrip_blocks`: every newline below is an
explicit `'\n'` inside an expression, never a literal one after a tag.
"""

# Renders one message's content to a string. Used by every template except `plain`.
_CONTENT_MACRO = (
    "{%- macro render(message) -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}"
    "{%- set ns = namespace(text='', before=0, after=0, seen_text=false) -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}"
    "{%- set ns.text = ns.text + part['text'] -%}{%- set ns.seen_text = true -%}"
    "{%- elif part['type'] == 'image' or part['type'] == 'image_url' -%}"
    "{%- if ns.seen_text -%}{%- set ns.after = ns.after + 1 -%}{%- else -%}{%- set ns.before = ns.before + 1 -%}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if ns.text == '' -%}{{- '<image>' * (ns.before + ns.after) -}}"
    "{%- else -%}{{- '<image>\\n' * ns.before + ns.text + '\\n<image>' * ns.after -}}{%- endif -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
)


def _system_prelude(default_system: str) -> str:
    """Sets `system` (the default, or a leading system message) and `turns` (the other messages)."""
    return (
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set system = render(messages[0]) -%}{%- set turns = messages[1:] -%}"
        "{%- else -%}"
        "{%- set system = " + repr(default_system) + " -%}{%- set turns = messages -%}"
        "{%- endif -%}"
    )


def _two_style(default_system: str, user: str, assistant: str, sep: str, sep2: str) -> str:
    """`SeparatorStyle.TWO` (vicuna_v1) and, with sep2 == sep, `SeparatorStyle.SINGLE` (llava_v0)."""
    return (
        _CONTENT_MACRO
        + _system_prelude(default_system)
        + "{{- system + " + repr(sep) + " -}}"
        + "{%- for message in turns -%}"
        + "{%- if message['role'] == 'user' -%}{{- " + repr(user + ": ") + " + render(message) + " + repr(sep) + " -}}"
        + "{%- else -%}{{- " + repr(assistant + ": ") + " + render(message) + " + repr(sep2) + " -}}{%- endif -%}"
        + "{%- endfor -%}"
        + "{%- if add_generation_prompt -%}{{- " + repr(assistant + ":") + " -}}{%- endif -%}"
    )


def _llama2_style(default_system: str, sep: str) -> str:
    """`SeparatorStyle.LLAMA_2`: `[INST] <<SYS>>...<</SYS>> q [/INST] a </s>`; the first `sep` is stripped."""
    return (
        _CONTENT_MACRO
        + _system_prelude(default_system)
        + "{%- for message in turns -%}"
        + "{%- if message['role'] == 'user' -%}"
        + "{%- set text = render(message) -%}"
        + "{%- if loop.first and system -%}{%- set text = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + text -%}{%- endif -%}"
        + "{%- if not loop.first -%}{{- " + repr(sep) + " -}}{%- endif -%}"
        + "{{- '[INST] ' + text + ' [/INST]' -}}"
        + "{%- else -%}{{- ' ' + render(message) + ' </s>' -}}{%- endif -%}"
        + "{%- endfor -%}"
    )


def _mpt_style(default_system: str, user: str, assistant: str, sep: str) -> str:
    """`SeparatorStyle.MPT` (chatml): `role + message + sep`, no separator between turns."""
    return (
        _CONTENT_MACRO
        + _system_prelude(default_system)
        + "{{- " + repr(user.replace("user", "system")) + " + system + " + repr(sep) + " -}}"
        + "{%- for message in turns -%}"
        + "{%- if message['role'] == 'user' -%}{{- " + repr(user) + " + render(message) + " + repr(sep) + " -}}"
        + "{%- else -%}{{- " + repr(assistant) + " + render(message) + " + repr(sep) + " -}}{%- endif -%}"
        + "{%- endfor -%}"
        + "{%- if add_generation_prompt -%}{{- " + repr(assistant) + " -}}{%- endif -%}"
    )


# Stage 1 (feature alignment): `<image>` then the caption then "\n"; the instruction text is dropped.
_PLAIN = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if message['content'] is string -%}{{- '<image>' * (message['content'].count('<image>')) -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or part['type'] == 'image_url' -%}{{- '<image>' -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- if message['content'] is string -%}{{- message['content'] + '\\n' -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{{- '\\n' -}}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAVA_V0_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)
CHATML_SYSTEM = "Answer the questions."

CHAT_TEMPLATES: dict[str, str] = {
    "vicuna_v1": _two_style(VICUNA_SYSTEM, "USER", "ASSISTANT", " ", "</s>"),
    "llava_v0": _two_style(LLAVA_V0_SYSTEM, "Human", "Assistant", "###", "###"),
    "plain": _PLAIN,
    "llama_2": _llama2_style(LLAMA_2_SYSTEM, "<s>"),
    "mistral_instruct": _llama2_style("", ""),
    "chatml": _mpt_style(CHATML_SYSTEM, "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>"),
}
"""Template name -> Jinja source. `vicuna_v1` is LLaVA-1.5's, `plain` is stage 1's."""

# The end of an assistant turn in each format: what the labels keep after an answer.
ASSISTANT_END: dict[str, str] = {
    "vicuna_v1": "</s>",
    "llava_v0": "###",
    "plain": "\n",
    "llama_2": " </s>",
    "mistral_instruct": " </s>",
    "chatml": "<|im_end|>",
}


def is_jinja(text: str) -> bool:
    """Whether `text` looks like Jinja source (has a `{{ ... }}` or `{% ... %}` tag) rather than a name."""
    return ("{{" in text and "}}" in text) or ("{%" in text and "%}" in text)


def get_chat_template(name_or_source: str) -> str:
    """The one template resolver: a `CHAT_TEMPLATES` name -> its Jinja source; Jinja source -> itself.

    Anything else (a mistyped name such as `"vicuna"`) raises, listing the known names: it would
    otherwise become a template that renders its own name for every conversation.
    """
    if not isinstance(name_or_source, str):
        raise TypeError(f"chat_template must be a template name or Jinja source, got {type(name_or_source).__name__}.")
    if name_or_source in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[name_or_source]
    if is_jinja(name_or_source):
        return name_or_source
    raise ValueError(
        f"chat_template={name_or_source!r} is neither a known template ({', '.join(sorted(CHAT_TEMPLATES))}) "
        "nor Jinja source; pick one of those names or pass the template's Jinja text."
    )


__all__ = ["ASSISTANT_END", "CHAT_TEMPLATES", "get_chat_template", "is_jinja"]
