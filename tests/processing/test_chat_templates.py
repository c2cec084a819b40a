"""The Jinja chat templates render exactly what the original LLaVA `conversation.py` renders.

`original_prompt` below restates the original `Conversation.get_prompt` for each separator style
(SINGLE, TWO, MPT, PLAIN, LLAMA_2) as the reference; the templates must match it on every case.
"""

import pytest

from hf_llava import CHAT_TEMPLATES
from hf_llava.processing import get_chat_template

# name -> (style, system, roles, sep, sep2), as in the original conversation templates
ORIGINAL = {
    "vicuna_v1": ("TWO", "A chat between a curious user and an artificial intelligence assistant. The assistant "
                  "gives helpful, detailed, and polite answers to the user's questions.", ("USER", "ASSISTANT"),
                  " ", "</s>"),
    "llava_v0": ("SINGLE", "A chat between a curious human and an artificial intelligence assistant. The "
                 "assistant gives helpful, detailed, and polite answers to the human's questions.",
                 ("Human", "Assistant"), "###", None),
    "plain": ("PLAIN", "", ("", ""), "\n", None),
    "llama_2": ("LLAMA_2", "You are a helpful language and vision assistant. You are able to understand the "
                "visual content that the user provides, and assist the user with a variety of tasks using natural "
                "language.", ("USER", "ASSISTANT"), "<s>", "</s>"),
    "mistral_instruct": ("LLAMA_2", "", ("USER", "ASSISTANT"), "", "</s>"),
    "chatml": ("MPT", "<|im_start|>system\nAnswer the questions.", ("<|im_start|>user\n", "<|im_start|>assistant\n"),
               "<|im_end|>", None),
}


def original_prompt(name, turns, system=None):
    """The original get_prompt; `turns` is [(role_index, message or None)]; None = open turn."""
    style, default_system, roles, sep, sep2 = ORIGINAL[name]
    if system is not None:
        default_system = ("<|im_start|>system\n" + system) if style == "MPT" else system
    messages = [(roles[i], m) for i, m in turns]
    if style == "SINGLE":
        ret = default_system + sep
        for role, message in messages:
            ret += role + ": " + message + sep if message else role + ":"
    elif style == "TWO":
        seps = [sep, sep2]
        ret = default_system + seps[0]
        for i, (role, message) in enumerate(messages):
            ret += role + ": " + message + seps[i % 2] if message else role + ":"
    elif style == "MPT":
        ret = default_system + sep
        for role, message in messages:
            ret += role + message + sep if message else role
    elif style == "PLAIN":
        ret = default_system
        for i, (_role, message) in enumerate(messages):
            if message:
                ret += message + [sep, sep2][i % 2]
    else:  # LLAMA_2
        wrap_sys = lambda msg: f"<<SYS>>\n{msg}\n<</SYS>>\n\n" if len(msg) > 0 else msg  # noqa: E731
        ret = ""
        for i, (_role, message) in enumerate(messages):
            if message:
                if i == 0:
                    message = wrap_sys(default_system) + message
                if i % 2 == 0:
                    ret += sep + f"[INST] {message} [/INST]"
                else:
                    ret += " " + message + " " + sep2
        ret = ret.lstrip(sep)
    return ret


def render(processor, name, messages, add_generation_prompt):
    return processor.apply_chat_template(messages, chat_template=CHAT_TEMPLATES[name],
                                         add_generation_prompt=add_generation_prompt, tokenize=False)


CONVERSATION = [
    (0, "<image>\nWhat is in the picture?"),
    (1, "A red square on a blue background."),
    (0, "What colour is the circle?"),
    (1, "Green."),
]


def as_messages(turns):
    messages = []
    for i, text in turns:
        if i == 0 and text.startswith("<image>\n"):
            content = [{"type": "image"}, {"type": "text", "text": text[len("<image>\n"):]}]
        else:
            content = [{"type": "text", "text": text}]
        messages.append({"role": ["user", "assistant"][i], "content": content})
    return messages


@pytest.mark.parametrize("name", [n for n in ORIGINAL if n != "plain"])
@pytest.mark.parametrize("n_turns", [1, 2, 4])
def test_templates_match_the_original(tiny_processor, name, n_turns):
    turns = CONVERSATION[:n_turns]
    open_turn = n_turns % 2 == 1
    expected = original_prompt(name, turns + ([(1, None)] if open_turn else []))
    assert render(tiny_processor, name, as_messages(turns), add_generation_prompt=open_turn) == expected


@pytest.mark.parametrize("name", ["vicuna_v1", "llava_v0", "llama_2", "chatml"])
def test_system_message_replaces_the_default(tiny_processor, name):
    messages = [{"role": "system", "content": "Be brief."}] + as_messages(CONVERSATION[:1])
    expected = original_prompt(name, CONVERSATION[:1] + [(1, None)], system="Be brief.")
    assert render(tiny_processor, name, messages, add_generation_prompt=True) == expected


def test_plain_is_image_then_caption_then_newline(tiny_processor):
    messages = as_messages([(0, "<image>\nDescribe the image briefly."), (1, "A cat on a table.")])
    assert render(tiny_processor, "plain", messages, False) == "<image>A cat on a table.\n"
    # the original's preprocess_plain: image token + caption + the plain conversation's sep
    assert "<image>" + "A cat on a table." + ORIGINAL["plain"][3] == "<image>A cat on a table.\n"


def test_vicuna_v1_literal(tiny_processor):
    messages = as_messages(CONVERSATION[:1])
    assert render(tiny_processor, "vicuna_v1", messages, True) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nWhat is in the picture? ASSISTANT:")


def test_image_after_the_text_renders_after_it(tiny_processor):
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image"}]}]
    assert render(tiny_processor, "vicuna_v1", messages, True).endswith("USER: What is this?\n<image> ASSISTANT:")
    two = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Compare"}, {"type": "image"}]}]
    assert "USER: <image>\nCompare\n<image> ASSISTANT:" in render(tiny_processor, "vicuna_v1", two, True)


def test_string_content_passes_through(tiny_processor):
    messages = [{"role": "user", "content": "<image>\nHi"}]
    assert render(tiny_processor, "vicuna_v1", messages, True).endswith("USER: <image>\nHi ASSISTANT:")


def test_unknown_template_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="vicuna_v1"):
        get_chat_template("vicuna")


def test_a_mistyped_name_is_refused_everywhere(tiny_processor, tmp_path, capsys):
    """One resolver: a known name or Jinja source; a typo is not rendered as the template."""
    from hf_llava import LlavaProcessor
    from hf_llava.cli import main

    with pytest.raises(ValueError, match="chat_template='vicuna' is neither a known template.*vicuna_v1"):
        LlavaProcessor(image_processor=tiny_processor.image_processor, tokenizer=tiny_processor.tokenizer,
                       patch_size=6, chat_template="vicuna")
    jinja = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert get_chat_template(jinja) == jinja
    code = main(["convert", "--from", "llava-hf", "--to", "hf-llava", str(tmp_path / "a"), str(tmp_path / "b"),
                 "--chat-template", "vicuna"])
    err = capsys.readouterr().err
    assert code == 2 and "--chat-template vicuna" in err and "vicuna_v1" in err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("name", ["vicuna_v1", "plain", "chatml"])
def test_templates_use_the_processors_image_token(tiny_processor, tiny_config, name):
    from hf_llava import LlavaProcessor, add_llava_tokens, tiny

    tokenizer = tiny.build_tokenizer()
    add_llava_tokens(tokenizer, "<img>")
    processor = LlavaProcessor(image_processor=tiny_processor.image_processor, tokenizer=tokenizer, patch_size=6,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               image_token="<img>", chat_template=name)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}]
    text = processor.apply_chat_template(messages)
    assert "<img>" in text and "<image>" not in text
    # rendered without the processor (e.g. by a tokenizer), the default token is used
    assert "<image>" in render(tiny_processor, name, messages, False)


def test_each_format_is_one_record():
    from hf_llava.processing import CHAT_FORMATS

    # what the original appends after an answer, per separator style
    ends = {"TWO": lambda sep, sep2: sep2, "LLAMA_2": lambda sep, sep2: " " + sep2}
    for name, chat in CHAT_FORMATS.items():
        style, _, _, sep, sep2 = ORIGINAL[name]
        assert chat.name == name and CHAT_TEMPLATES[name] == chat.template
        assert chat.assistant_end == ends.get(style, lambda sep, sep2: sep)(sep, sep2), name
