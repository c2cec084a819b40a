"""The LLaVA conversation formats as Jinja chat templates, one `ChatFormat` record each.

Each template renders exactly what the original LLaVA `conversation.py` renders for the same turns
(`Conversation.get_prompt`), for transformers' message format:
`[{"role": "system"|"user"|"assistant", "content": str | [{"type": "image"}, {"type": "text", "text": ...}]}]`.

In a user turn, an image part before the text renders as `<image>\n` + text, after it as
text + `\n<image>` (`<image>` is the processor's `image_token`, passed to the template as
`image_token`). A leading `system` message replaces the template's default system prompt.
`add_generation_prompt=True` appends what the original appends for an open assistant turn.

transformers renders chat templates with `trim_blocks` and `lstrip_blocks`: every newline below is an
explicit `'\n'` inside an expression, never a literal one after a tag.
"""

from dataclasses import dataclass
from typing import Optional

# The template variable `image_token` (the processor passes its own), `<image>` when rendered without it.
_IMAGE_TOKEN = "{%- set image_token = image_token if image_token is defined else '<image>' -%}"

# Renders one message's content to a string. Used by every template except `plain`.
_CONTENT_MACRO = (
    _IMAGE_TOKEN
    + "{%- macro render(message, image_token) -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}"
    "{%- set ns = namespace(text='', before=0, after=0, seen_text=false) -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}"
    "{%- set ns.text = ns.text + part['text'] -%}{%- set ns.seen_text = true -%}"
    "{%- elif part['type'] == 'image' or part['type'] == 'image_url' -%}"
    "{%- if ns.seen_text -%}{%- set ns.after = ns.after + 1 -%}"
    "{%- else -%}{%- set ns.before = ns.before + 1 -%}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if ns.text == '' -%}{{- image_token * (ns.before + ns.after) -}}"
    "{%- else -%}{{- (image_token + '\\n') * ns.before + ns.text + ('\\n' + image_token) * ns.after -}}{%- endif -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
)


def _system_prelude(default_system: str) -> str:
    """Sets `system` (the default, or a leading system message) and `turns` (the other messages)."""
    return (
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set system = render(messages[0], image_token) -%}{%- set turns = messages[1:] -%}"
        "{%- else -%}"
        "{%- set system = " + repr(default_system) + " -%}{%- set turns = messages -%}"
        "{%- endif -%}"
    )


@dataclass(frozen=True)
class ChatFormat:
    """One LLaVA conversation format: its name, its Jinja source, the text that ends an assistant turn (what
    the training labels keep after each answer), and the special token that text stands for (`end_token`,
    which the tokenizer must hold as one special token so that generation stops there; None where the end is
    plain text, such as `plain`'s newline or `llava_v0`'s `###`, matched as a stop string)."""

    name: str
    template: str
    assistant_end: str
    end_token: Optional[str] = None


def _separator_style(name: str, default_system: str, user: str, assistant: str, sep: str, sep2: str,
                     end_token: Optional[str] = None) -> ChatFormat:
    """`SeparatorStyle.TWO` (vicuna_v1: `sep` after user turns, `sep2` after answers) and, with
    sep2 == sep, `SeparatorStyle.SINGLE` (llava_v0)."""
    return ChatFormat(name, (
        _CONTENT_MACRO
        + _system_prelude(default_system)
        + "{{- system + " + repr(sep) + " -}}"
        + "{%- for message in turns -%}"
        + "{%- if message['role'] == 'user' -%}"
        + "{{- " + repr(user + ": ") + " + render(message, image_token) + " + repr(sep) + " -}}"
        + "{%- else -%}{{- " + repr(assistant + ": ") + " + render(message, image_token) + " + repr(sep2) + " -}}"
        + "{%- endif -%}"
        + "{%- endfor -%}"
        + "{%- if add_generation_prompt -%}{{- " + repr(assistant + ":") + " -}}{%- endif -%}"
    ), assistant_end=sep2, end_token=end_token)


def _llama2_style(name: str, default_system: str, sep: str) -> ChatFormat:
    """`SeparatorStyle.LLAMA_2`: `[INST] <<SYS>>...<</SYS>> q [/INST] a </s>`; the first `sep` is stripped."""
    answer_end = " </s>"
    return ChatFormat(name, (
        _CONTENT_MACRO
        + _system_prelude(default_system)
        + "{%- for message in turns -%}"
        + "{%- if message['role'] == 'user' -%}"
        + "{%- set text = render(message, image_token) -%}"
        + "{%- if loop.first and system -%}"
        + "{%- set text = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + text -%}{%- endif -%}"
        + "{%- if not loop.first -%}{{- " + repr(sep) + " -}}{%- endif -%}"
        + "{{- '[INST] ' + text + ' [/INST]' -}}"
        + "{%- else -%}{{- ' ' + render(message, image_token) + " + repr(answer_end) + " -}}{%- endif -%}"
        + "{%- endfor -%}"
    ), assistant_end=answer_end, end_token=answer_end.strip())


def _mpt_style(name: str, default_system: str, system: str, user: str, assistant: str, sep: str) -> ChatFormat:
    """`SeparatorStyle.MPT` (chatml): `role + message + sep`, no separator between turns."""
    return ChatFormat(name, (
        _CONTENT_MACRO
        + _system_prelude(default_system)
        + "{{- " + repr(system) + " + system + " + repr(sep) + " -}}"
        + "{%- for message in turns -%}"
        + "{%- if message['role'] == 'user' -%}"
        + "{{- " + repr(user) + " + render(message, image_token) + " + repr(sep) + " -}}"
        + "{%- else -%}{{- " + repr(assistant) + " + render(message, image_token) + " + repr(sep) + " -}}{%- endif -%}"
        + "{%- endfor -%}"
        + "{%- if add_generation_prompt -%}{{- " + repr(assistant) + " -}}{%- endif -%}"
    ), assistant_end=sep, end_token=sep)


# Stage 1 (feature alignment): `<image>` then the caption then "\n"; the instruction text is dropped.
_PLAIN = (
    _IMAGE_TOKEN
    + "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if message['content'] is string -%}{{- image_token * (message['content'].count(image_token)) -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or part['type'] == 'image_url' -%}{{- image_token -}}{%- endif -%}"
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

CHAT_FORMATS: dict[str, ChatFormat] = {f.name: f for f in (
    _separator_style("vicuna_v1", VICUNA_SYSTEM, "USER", "ASSISTANT", " ", "</s>", end_token="</s>"),
    _separator_style("llava_v0", LLAVA_V0_SYSTEM, "Human", "Assistant", "###", "###"),
    ChatFormat("plain", _PLAIN, assistant_end="\n"),
    _llama2_style("llama_2", LLAMA_2_SYSTEM, "<s>"),
    _llama2_style("mistral_instruct", "", ""),
    _mpt_style("chatml", CHATML_SYSTEM, "<|im_start|>system\n", "<|im_start|>user\n", "<|im_start|>assistant\n",
               "<|im_end|>"),
)}
"""Name -> `ChatFormat`. `vicuna_v1` is LLaVA-1.5's, `plain` is stage 1's."""

CHAT_TEMPLATES: dict[str, str] = {name: f.template for name, f in CHAT_FORMATS.items()}
"""Name -> Jinja source (a view of `CHAT_FORMATS`, for `chat_template=` arguments)."""


def chat_format(name: str) -> ChatFormat:
    """The `ChatFormat` called `name`, with an error listing the known names."""
    if name not in CHAT_FORMATS:
        raise ValueError(f"template={name!r} is not a known chat format; expected one of "
                         f"{', '.join(sorted(CHAT_FORMATS))}.")
    return CHAT_FORMATS[name]


def check_end_of_turn(tokenizer, fmt: ChatFormat) -> None:
    """Raise `ValueError` when `fmt` ends answers with a special token (`end_token`) that `tokenizer` does not
    hold as one special token: trained on its pieces, a model learns to write that text and never stops."""
    token = fmt.end_token
    if token is None:
        return
    token_id = tokenizer.convert_tokens_to_ids(token)
    special = set(tokenizer.all_special_ids)
    special |= {i for i, added in getattr(tokenizer, "added_tokens_decoder", {}).items() if added.special}
    if token_id is not None and token_id != tokenizer.unk_token_id and token_id in special:
        return
    pieces = tokenizer.tokenize(token)
    eos = tokenizer.eos_token
    fitting = sorted(f.name for f in CHAT_FORMATS.values() if eos is not None and f.end_token == eos)
    if fitting:
        names = " or ".join(repr(n) for n in fitting)
        use = f"template={names} (ending answers with the tokenizer's eos_token {eos!r})"
    else:
        use = f"a chat template that ends answers with the tokenizer's eos_token {eos!r}"
    raise ValueError(
        f"template={fmt.name!r} ends each answer with {token!r}, which this tokenizer makes {len(pieces)} ordinary "
        f"token(s) {pieces}, not one special token: the model would learn to write that text and never stop. Use "
        f"{use}, or add the token (tokenizer.add_tokens([{token!r}], special_tokens=True), then resize the model's "
        "embeddings)."
    )


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


__all__ = ["CHAT_FORMATS", "CHAT_TEMPLATES", "ChatFormat", "chat_format", "check_end_of_turn", "get_chat_template",
           "is_jinja"]
