"""The demo's splits, held out by content: what a test or validation scene shows was never shown before.

A scene's content is what it shows: the set of (quadrant, size, colour, kind) of its shapes (its id, jitter
and background are not content). The world's parts were pretrained on `PRETRAIN_SCENES` scenes of split
`PRETRAIN_SPLIT` (`scripts/pretrain_world.py` imports these constants), the vision tower also on a near miss of
each scene of their first half (`pretraining_contents` replays both); the demo trains on scenes of split
`"train"`; datagen's prompts carry few-shot examples. `heldout_scenes` draws scenes by rejection sampling
until none shows a content among those, so a test accuracy measures seeing new pictures, not recall.
With 1-4 shapes there are only 4 x 48 one-shape contents, and pretraining's scenes show them all: held-out
splits hold 2-4 shape scenes.
"""

import dataclasses
import random
from collections.abc import Iterable

from .parts import VISION_TOWER
from .scenes import COLOURS, QUADRANTS, SHAPES, Scene, make_scenes, quadrant_of, random_scene

PRETRAIN_SPLIT = "pretrain"  # scene ids of their own: never the demo's training or test scenes
PRETRAIN_SCENES = 12000  # scenes the shipped parts were pretrained on
PRETRAIN_SEED = 0


def content(scene: Scene) -> frozenset:
    """What `scene` shows: `{(quadrant, size, colour, kind), ...}` of its shapes."""
    return shapes_content(scene.shapes)


def shapes_content(shapes: Iterable) -> frozenset:
    """What a picture of `shapes` shows (`content` of a scene with them)."""
    return frozenset((s.quadrant, s.size, s.colour, s.kind) for s in shapes)


def pretraining_scenes() -> list[Scene]:
    """The scenes the shipped vision tower and LM were pretrained on (replayed, not read from disk)."""
    return make_scenes(PRETRAIN_SCENES, PRETRAIN_SEED, PRETRAIN_SPLIT)


def _near_miss(scene: Scene, rng: random.Random) -> Scene:
    """The scene mirrored (left-right or top-bottom: every shape changes place), or with one shape's kind (or
    colour) changed: a hard negative, so that the tower must see places and shapes (in a batch of random
    scenes, colours alone mostly tell the captions apart)."""
    if rng.random() < 0.5:
        axis = rng.randrange(2)  # 0: x, 1: y
        shapes = []
        for shape in scene.shapes:
            box = list(shape.bbox)
            box[axis], box[axis + 2] = round(1 - box[axis + 2], 3), round(1 - box[axis], 3)
            shapes.append(dataclasses.replace(shape, bbox=tuple(box), quadrant=quadrant_of(box)))
        shapes.sort(key=lambda s: QUADRANTS.index(s.quadrant))
        return dataclasses.replace(scene, id=f"{scene.id}-mirror", shapes=tuple(shapes))
    k = rng.randrange(len(scene.shapes))
    shape = scene.shapes[k]
    if rng.random() < 0.75:
        shape = dataclasses.replace(shape, kind=rng.choice([s for s in SHAPES if s != shape.kind]))
    else:
        shape = dataclasses.replace(shape, colour=rng.choice([c for c in COLOURS if c != shape.colour]))
    return dataclasses.replace(scene, id=f"{scene.id}-miss", shapes=scene.shapes[:k] + (shape,) + scene.shapes[k + 1:])


def near_misses(scenes: list[Scene], rng: random.Random) -> list[Scene]:
    """A near miss of each scene, in order: the vision tower's hard negatives (`scripts/pretrain_world.py`)."""
    return [_near_miss(scene, rng) for scene in scenes]


def vision_rng(seed: int) -> random.Random:
    """The random stream of the vision tower's pretraining; its near misses are drawn from it first."""
    return random.Random(f"{seed}:{VISION_TOWER}")


def pretraining_contents() -> set:
    """What the shipped parts saw in pretraining (replayed, once): the contents of `pretraining_scenes()` and of
    the near-miss pictures the vision tower was also trained on, one for each scene of their first half."""
    scenes = pretraining_scenes()
    return {content(s) for s in scenes + near_misses(scenes[:len(scenes) // 2], vision_rng(PRETRAIN_SEED))}


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
            contents.add(shapes_content(shapes))
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


__all__ = ["PRETRAIN_SCENES", "PRETRAIN_SEED", "PRETRAIN_SPLIT", "content", "heldout_scenes", "near_misses",
           "pretraining_contents", "pretraining_scenes", "prompt_example_contents", "shapes_content", "vision_rng"]
