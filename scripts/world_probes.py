"""Probes of the world's language model, for `pretrain_world.py` and the tests of the shipped parts (not the
package: nothing at run time needs them).

What the world's language model can do on its own, before LLaVA: answer questions about what it has just read.

LLaVA relies on its LM (Vicuna) to answer from what is in its context; the visual tokens only have to stand in
for a description of the picture. `context_qa` measures that skill on the world's LM: each held-out scene's first
caption (which names every shape, its colour, size and place), then one question of each type in the LM's own
pretraining format (`Question: ... Answer:`), answered greedily; an answer is right when its first sentence is
the reference sentence (a yes/no sentence names the shape's place too).

`shorthand_qa` measures the same on a picture given in shorthand, the form in which the LM's pretraining also
shows pictures: four input positions, one per quadrant in reading order (top left, top right, bottom left,
bottom right), each holding the mean of the input embeddings of the words that say what is there
(`quadrant_phrase`: "large red circle", or "empty"); a quadrant's place is its position's order, not a word,
since the vision tower's patch tokens carry what each quadrant holds far better than where it is. That is the
interface LLaVA's projector would ideally learn to feed from the tower's four patch tokens in stage 1. Asked in
the pretraining layout (answers in sentences, or in one word or phrase with LLaVA-1.5's short-answer
instruction) or in the `vicuna_v1` chat layout (answers in sentences).
"""

import random
from typing import Optional, Sequence

from hf_llava.processing.chat_templates import CHAT_TEMPLATES
from hf_llava.world.questions import QUESTION_TYPES, ask
from hf_llava.world.scenes import QUADRANTS, Scene, captions, make_scenes

PROBE_SPLIT = "probe"  # scene ids of their own: never pretraining, demo training or test scenes
IMAGE = "<image>"  # where a text puts the picture: a special token of the world tokenizer
LAYOUTS = ("pretraining", "chat")


def quadrant_phrase(scene: Scene, quadrant: str) -> str:
    """What is in one quadrant, in words: "large red circle" or "empty"."""
    shape = next((s for s in scene.shapes if s.quadrant == quadrant), None)
    return "empty" if shape is None else f"{shape.size} {shape.colour} {shape.kind}"


def shorthand_id(tokenizer) -> int:
    """`IMAGE`'s id in `tokenizer`: where a shorthand picture's four vectors go."""
    ids = tokenizer(IMAGE, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"the tokenizer reads {IMAGE} as {ids}, not one token: not the world's tokenizer?")
    return ids[0]


def encode_shorthand(tokenizer, scene: Scene, text: str) -> tuple[list[int], list[list[int]]]:
    """`(input_ids, phrase_ids)`: `text` (with BOS) with its one `IMAGE` made four `shorthand_id`s, one per
    quadrant; and each quadrant's phrase's token ids."""
    if text.count(IMAGE) != 1:
        raise ValueError(f"text={text[:60]!r}...: expected exactly one {IMAGE} (where the picture goes).")
    image_id = shorthand_id(tokenizer)
    ids = tokenizer(text)["input_ids"]
    k = ids.index(image_id)
    ids = ids[:k] + [image_id] * len(QUADRANTS) + ids[k + 1:]
    return ids, [tokenizer(" " + quadrant_phrase(scene, q), add_special_tokens=False)["input_ids"] for q in QUADRANTS]


def qa_text(question: str, answer: str = "") -> str:
    """One question and its answer in the LM's pretraining layout (`answer` empty: the prompt)."""
    return f"Question: {question} Answer:" + (f" {answer}" if answer else "")


def pretraining_text(question: str) -> str:
    """A shorthand picture then one question in the LM's pretraining layout, to be answered."""
    return f"{IMAGE} {qa_text(question)}"


def chat_text(tokenizer, turns: Sequence[tuple[str, str]]) -> str:
    """A `vicuna_v1` conversation about a shorthand picture (before the first question), rendered by LLaVA's
    own template; the last answer may be empty (then the text ends with the open `ASSISTANT:`)."""
    messages = []
    for k, (question, answer) in enumerate(turns):
        messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]
                         if k == 0 else question})
        if answer:
            messages.append({"role": "assistant", "content": answer})
    return tokenizer.apply_chat_template(messages, chat_template=CHAT_TEMPLATES["vicuna_v1"], tokenize=False,
                                         add_generation_prompt=not turns[-1][1])


def collate_shorthand(rows: Sequence[tuple[list[int], list[list[int]]]], pad_id: int, left: bool = False) -> dict:
    """`input_ids`, `attention_mask` (padded right, or left) and the phrases' `phrase_ids` / `phrase_mask`
    `(B, 4, L)` of rows from `encode_shorthand` (text rows have no phrases)."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    phrase_len = max([len(p) for _, ps in rows for p in ps] or [1])
    input_ids = torch.full((len(rows), width), pad_id)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    phrase_ids = torch.zeros((len(rows), len(QUADRANTS), phrase_len), dtype=torch.long)
    phrase_mask = torch.zeros((len(rows), len(QUADRANTS), phrase_len))
    for k, (ids, phrases) in enumerate(rows):
        span = slice(width - len(ids), width) if left else slice(0, len(ids))
        input_ids[k, span] = torch.tensor(ids)
        attention_mask[k, span] = 1
        for j, p in enumerate(phrases):
            phrase_ids[k, j, :len(p)] = torch.tensor(p)
            phrase_mask[k, j, :len(p)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "phrase_ids": phrase_ids,
            "phrase_mask": phrase_mask}


def shorthand_embeds(model, input_ids, phrase_ids, phrase_mask, image_id: int):
    """`model`'s input embeddings of `input_ids` with each `image_id` (`shorthand_id`) replaced, in order, by the mean
    embedding of the next phrase (the rows' phrases that have tokens)."""
    table = model.get_input_embeddings()
    embeds = table(input_ids)
    slots = (table(phrase_ids) * phrase_mask[..., None]).sum(2) / phrase_mask.sum(2, keepdim=True).clamp(min=1)
    where = (input_ids == image_id)[..., None].expand_as(embeds)
    return embeds.masked_scatter(where, slots[phrase_mask.any(-1)].to(embeds.dtype))


def context_qa_prompt(caption: str, question: str) -> str:
    return f"{caption} Question: {question} Answer:"


def context_qa(model, tokenizer, scenes: Sequence[Scene] = (), count: int = 100, seed: int = 0,
               batch_size: int = 32, captions_of: Optional[Sequence[Scene]] = None) -> dict:
    """Accuracy (percent) of `model` answering questions about a caption in its context, overall and per type.

    `scenes` defaults to `count` probe scenes. `captions_of`: other scenes, one per scene, whose captions are
    shown instead (the control: what the LM answers without the facts in its context). Returns
    `{"accuracy", "per_type", "questions"}`.
    """
    import torch

    scenes = list(scenes) or make_scenes(count, seed, PROBE_SPLIT)
    shown = scenes if captions_of is None else list(captions_of)
    if len(shown) != len(scenes):
        raise ValueError(f"captions_of has {len(shown)} scenes for {len(scenes)} scenes: expected one per scene.")
    items = []  # (type, prompt, reference sentence)
    for scene, other in zip(scenes, shown):
        rng = random.Random(f"probe:{seed}:{scene.id}")  # the questions depend only on the scene asked about
        caption = captions(other, random.Random(f"probe-caption:{seed}:{other.id}"))[0]
        items += [(qa.type, context_qa_prompt(caption, qa.question), qa.sentence)
                  for kind in QUESTION_TYPES if (qa := ask(scene.shapes, kind, rng))]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    right: dict[str, list[bool]] = {}
    try:
        for start in range(0, len(items), batch_size):
            batch = items[start:start + batch_size]
            inputs = tokenizer([prompt for _, prompt, _ in batch], return_tensors="pt", padding=True)
            with torch.inference_mode():
                output = model.generate(**inputs.to(model.device), max_new_tokens=24, do_sample=False,
                                        pad_token_id=pad_id)
            texts = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            for (kind, _, reference), text in zip(batch, texts):
                right.setdefault(kind, []).append(text.strip().split(".")[0] + "." == reference)
    finally:
        tokenizer.padding_side = side
    return _scores(right)


def _scores(right: dict) -> dict:
    every = [r for rs in right.values() for r in rs]
    return {"accuracy": round(100 * sum(every) / max(1, len(every)), 1), "questions": len(every),
            "per_type": {kind: round(100 * sum(rs) / len(rs), 1) for kind, rs in right.items()}}


def shorthand_qa(model, tokenizer, scenes: Sequence[Scene] = (), count: int = 100, seed: int = 0,
                 batch_size: int = 64, pictures_of: Optional[Sequence[Scene]] = None, layout: str = "pretraining",
                 short: bool = False) -> dict:
    """Accuracy (percent) of `model` answering, greedily, one question of each type about each scene given in
    shorthand, overall and per type. `layout`: `"pretraining"` (`Question: ... Answer:` after the picture) or
    `"chat"` (`vicuna_v1`, the picture before the question); `short`: with LLaVA-1.5's short-answer instruction,
    right when the answer (up to a full stop) is the one word or phrase, else when its first sentence is the
    reference sentence. `scenes` defaults to `count` probe scenes; `pictures_of`: other scenes, one per scene,
    shown instead (the control)."""
    import torch

    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {', '.join(LAYOUTS)}.")
    scenes = list(scenes) or make_scenes(count, seed, PROBE_SPLIT)
    shown = scenes if pictures_of is None else list(pictures_of)
    if len(shown) != len(scenes):
        raise ValueError(f"pictures_of has {len(shown)} scenes for {len(scenes)} scenes: expected one per scene.")
    items = []  # (type, encoded prompt, reference)
    for scene, other in zip(scenes, shown):
        rng = random.Random(f"probe:{seed}:{scene.id}")
        for kind in QUESTION_TYPES:
            if (qa := ask(scene.shapes, kind, rng)) is None:
                continue
            question = qa.short_prompt() if short else qa.question
            text = pretraining_text(question) if layout == "pretraining" else chat_text(tokenizer, [(question, "")])
            items.append((qa.type, encode_shorthand(tokenizer, other, text), qa.answer if short else qa.sentence))
    right: dict[str, list[bool]] = {}
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        inputs = collate_shorthand([row for _, row, _ in batch], tokenizer.pad_token_id, left=True)
        with torch.inference_mode():
            embeds = shorthand_embeds(model, inputs["input_ids"], inputs["phrase_ids"], inputs["phrase_mask"],
                                      shorthand_id(tokenizer))
            output = model.generate(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], max_new_tokens=16,
                                    do_sample=False, pad_token_id=tokenizer.pad_token_id)
        for (kind, _, reference), text in zip(batch, tokenizer.batch_decode(output, skip_special_tokens=True)):
            first = text.strip().split(".")[0]
            right.setdefault(kind, []).append(first == reference if short else first + "." == reference)
    return _scores(right)


def context_qa_with_control(model, tokenizer, scenes: Sequence[Scene] = (), count: int = 100, seed: int = 0,
                            batch_size: int = 32) -> tuple[dict, dict]:
    """`(read, control)`: `context_qa` on `scenes`, then the same questions each after the next scene's caption."""
    scenes = list(scenes) or make_scenes(count, seed, PROBE_SPLIT)
    read = context_qa(model, tokenizer, scenes, seed=seed, batch_size=batch_size)
    control = context_qa(model, tokenizer, scenes, seed=seed, batch_size=batch_size,
                         captions_of=scenes[1:] + scenes[:1])
    return read, control


__all__ = ["IMAGE", "LAYOUTS", "PROBE_SPLIT", "chat_text", "collate_shorthand", "context_qa",
           "context_qa_prompt", "context_qa_with_control", "encode_shorthand", "pretraining_text", "qa_text",
           "quadrant_phrase", "shorthand_embeds", "shorthand_id", "shorthand_qa"]
