"""The demo's splits, held out by content: what a test or validation scene shows was never shown before.

A scene's content is what it shows: the set of (quadrant, size, colour, kind) of its shapes (its id, jitter
and background are not content). The world's parts were pretrained on `PRETRAIN_SCENES` scenes of split
`PRETRAIN_SPLIT` (`scripts/pretrain_world.py` imports these constants); the demo trains on scenes of split
`"train"`; datagen's prompts carry few-shot examples. `heldout_scenes` draws scenes by rejection sampling
until none shows a content among those, so a test accuracy measures seeing new pictures, not recall.
With 1-4 shapes there are only 4 x 48 one-shape contents, and pretraining's scenes show them all: held-out
splits hold 2-4 shape scenes.
"""

import random
from collections.abc import Iterable

from .scenes import Scene, make_scenes, random_scene

PRETRAIN_SPLIT = "pretrain"  # scene ids of their own: never the demo's training or test scenes
PRETRAIN_SCENES = 12000  # scenes the shipped parts were pretrained on
PRETRAIN_SEED = 0


def content(scene: Scene) -> frozenset:
    """What `scene` shows: `{(quadrant, size, colour, kind), ...}` of its shapes."""
    return frozenset((s.quadrant, s.size, s.colour, s.kind) for s in scene.shapes)


def pretraining_scenes() -> list[Scene]:
    """The scenes the shipped vision tower and LM were pretrained on (replayed, not read from disk)."""
    return make_scenes(PRETRAIN_SCENES, PRETRAIN_SEED, PRETRAIN_SPLIT)


def prompt_example_contents(types: Iterable[str]) -> set:
    """The contents of the shipped few-shot examples of datagen's prompt sets `types` that are scenes of this
    world (boxes of world shapes only); examples about other pictures (COCO's kitchens...) show none."""
    from ..datagen.prompt_sets import load_prompt_set
    from .teacher import UnknownRequest, read_context

    contents = set()
    for kind in types:
        for context, _ in load_prompt_set(kind).examples:
            try:
                _, shapes = read_context(context)
            except UnknownRequest:
                continue
            contents.add(frozenset((s.quadrant, s.size, s.colour, s.kind) for s in shapes))
    return contents


def heldout_scenes(count: int, seed: int, prefix: str, seen: Iterable[frozenset]) -> list[Scene]:
    """`count` scenes with ids `{prefix}-00000`..., none showing a content in `seen` nor repeating one of the
    split's own (rejection sampling; the same arguments give the same scenes, and a smaller `count` a prefix)."""
    seen = set(seen)
    rng = random.Random(f"{prefix}:{seed}")
    scenes = []
    for _ in range(1000 * (count + 1)):
        if len(scenes) == count:
            return scenes
        scene = random_scene(rng, f"{prefix}-{len(scenes):05d}")
        if content(scene) not in seen:
            seen.add(content(scene))
            scenes.append(scene)
    if len(scenes) == count:
        return scenes
    raise ValueError(f"{prefix}: found {len(scenes)} of {count} scenes with unseen contents; ask for fewer.")


__all__ = ["PRETRAIN_SCENES", "PRETRAIN_SEED", "PRETRAIN_SPLIT", "content",
           "heldout_scenes", "pretraining_scenes", "prompt_example_contents"]
