"""Replies -> turns: each type's format is accepted; empty, refused and malformed replies are rejected."""

import pytest

from hf_llava.datagen import TYPES, ReplyRejected, load_prompts, parse_reply

DESCRIPTION = ("A grey cat sleeps curled up on a red sofa in a sunny living room, next to a lamp and a pile of "
               "cushions, while the afternoon light falls across the floor.")


def test_each_format_becomes_alternating_turns():
    conversation = parse_reply("conversation", "Question: What animal is it?\nAnswer: A cat.\n\n"
                                               "Question: Where is it?\nAnswer: On the sofa,\nnext to a lamp.")
    assert conversation == [{"from": "human", "value": "What animal is it?"}, {"from": "gpt", "value": "A cat."},
                            {"from": "human", "value": "Where is it?"},
                            {"from": "gpt", "value": "On the sofa,\nnext to a lamp."}]
    assert [t["from"] for t in parse_reply("complex", "Question: Why?\nAnswer: Because.")] == ["human", "gpt"]
    bold = parse_reply("complex", "**Question:** Why is it dark?\n**Answer:** The sun has set.")
    assert [t["value"] for t in bold] == ["Why is it dark?", "The sun has set."]
    assert parse_reply("detail", f"  {DESCRIPTION}\n") == [{"from": "gpt", "value": DESCRIPTION}]


@pytest.mark.parametrize("kind,reply,reason", [
    ("conversation", "", "empty reply"),
    ("detail", "   \n", "empty reply"),
    ("complex", "I'm sorry, but I can't help with that.", "refusal"),
    ("detail", "As an AI language model, I cannot see images. " + DESCRIPTION, "refusal"),
    ("conversation", "Sure! Here you go.\nQuestion: What?\nAnswer: A cat.", "text before the first"),
    ("conversation", "Question: What?\nQuestion: Where?\nAnswer: Here.", "alternate"),
    ("conversation", "Question: What is it?\nAnswer:", "empty question or answer"),
    ("complex", "Question: Why?\nAnswer: One.\nQuestion: How?\nAnswer: Two.", "one question"),
    ("complex", "The cat is asleep because it is tired.", "no 'Question:'"),
    ("detail", "A cat on a sofa.", "too short"),
    ("detail", "Question: What is it?\nAnswer: " + DESCRIPTION, "a description was expected"),
    ("detail", DESCRIPTION + " The cat lies at [0.100, 0.250, 0.500, 0.750].", "coordinates"),
    ("conversation", "Question: Where is the cat?\nAnswer: Its box is 0.100 to 0.500.", "coordinates"),
    ("complex", "Question: What is in <image>?\nAnswer: A cat.", "<image>"),
])
def test_bad_replies_are_rejected_with_a_reason(kind, reply, reason):
    with pytest.raises(ReplyRejected, match=reason):
        parse_reply(kind, reply)


def test_the_shipped_prompts_teach_the_formats_the_parsers_accept():
    prompt_sets = load_prompts(list(TYPES))
    for kind, prompt_set in prompt_sets.items():
        assert len(prompt_set.examples) >= 2
        for _, answer in prompt_set.examples:
            assert parse_reply(kind, answer)
    assert len(set(prompt_sets["detail"].instructions)) >= 8
