"""What the world's language model can do on its own, before LLaVA: answer questions about text it has just read.

LLaVA relies on its LM (Vicuna) to answer from what is in its context; the visual tokens only have to stand in
for a description of the picture. `context_qa` measures that skill on the world's LM: each held-out scene's first
caption (which names every shape, its colour, size and place), then one question of each type in the LM's own
pretraining format (`Question: ... Answer:`), answered greedily; an answer is right when its first sentence is
the reference sentence (a yes/no sentence names the shape's place too). The demo's VQA accuracy after stage 2
has stayed close to this number: a model that cannot read a fact from a caption in its context does not learn
to read it from four visual tokens in a few hundred steps either.
"""

import random
from typing import Optional, Sequence

from .questions import QUESTION_TYPES, ask
from .scenes import Scene, captions, make_scenes

PROBE_SPLIT = "probe"  # scene ids of their own: never pretraining, demo training or test scenes


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
    every = [r for rs in right.values() for r in rs]
    return {"accuracy": round(100 * sum(every) / max(1, len(every)), 1), "questions": len(every),
            "per_type": {kind: round(100 * sum(rs) / len(rs), 1) for kind, rs in right.items()}}


def context_qa_with_control(model, tokenizer, scenes: Sequence[Scene] = (), count: int = 100, seed: int = 0,
                            batch_size: int = 32) -> tuple[dict, dict]:
    """`(read, control)`: `context_qa` on `scenes`, then the same questions each after the next scene's caption."""
    scenes = list(scenes) or make_scenes(count, seed, PROBE_SPLIT)
    read = context_qa(model, tokenizer, scenes, seed=seed, batch_size=batch_size)
    control = context_qa(model, tokenizer, scenes, seed=seed, batch_size=batch_size,
                         captions_of=scenes[1:] + scenes[:1])
    return read, control


__all__ = ["PROBE_SPLIT", "context_qa", "context_qa_prompt", "context_qa_with_control"]
