"""The demo's visual world: scenes of 1-4 shapes drawn with PIL, with their captions and boxes.

A scene puts each of its shapes in its own quadrant of a square picture (so "top left" always names one
place), each with a colour, a kind (circle, square, triangle, cross) and a size. What a scene owns:
- `draw`: the picture (drawn at 4x and downsampled, so edges are smooth; colours and background jitter);
- `captions`: a few sentences that each describe it, as COCO gives five per image;
- `instances`: its boxes in the datagen input layout (`{"category": "red circle", "bbox": [x1, y1, x2, y2]}`,
  normalised, origin top left), from which `quadrant_of` / `size_of` read position and size back.
`write_scenes` writes a split: the PNGs and `scenes.jsonl`, the captions + boxes file `hf-llava datagen
--input` reads.
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {  # name -> RGB; each shape's colour is jittered around it
    "red": (215, 40, 40),
    "orange": (240, 135, 25),
    "yellow": (235, 220, 45),
    "green": (40, 165, 60),
    "blue": (45, 90, 225),
    "purple": (145, 60, 195),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = ("small", "large")
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
MAX_SHAPES = 4
IMAGE_SIZE = 64  # pixels of the saved pictures; the vision tower's image processor resizes them
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
_SIZE_RANGE = {"small": (0.48, 0.58), "large": (0.78, 0.92)}  # side, as a fraction of a quadrant
_LARGE_MIN_WIDTH = 0.32  # boxes wider than this (of the image) are large: the two ranges never meet there
_JITTER = 0.5  # of the room a shape has in its quadrant, used for shifting it off the centre
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Shape:
    colour: str
    kind: str
    size: str
    quadrant: str
    bbox: tuple  # (x1, y1, x2, y2), normalised to [0, 1]

    @property
    def name(self) -> str:
        """`"red circle"`: the box category."""
        return f"{self.colour} {self.kind}"


@dataclass(frozen=True)
class Scene:
    id: str
    shapes: tuple
    background: int  # grey level
    seed: int  # the drawing's jitter and noise


def quadrant_of(bbox) -> str:
    """The quadrant holding a box's centre."""
    x = (bbox[0] + bbox[2]) / 2
    y = (bbox[1] + bbox[3]) / 2
    return f"{'top' if y < 0.5 else 'bottom'} {'left' if x < 0.5 else 'right'}"


def size_of(bbox) -> str:
    return "large" if bbox[2] - bbox[0] > _LARGE_MIN_WIDTH else "small"


def random_scene(rng: random.Random, scene_id: str) -> Scene:
    """1-4 shapes (uniform), each in its own quadrant, colour, kind and size drawn uniformly."""
    quadrants = rng.sample(QUADRANTS, rng.randint(1, MAX_SHAPES))
    shapes = []
    for quadrant in sorted(quadrants, key=QUADRANTS.index):
        size = rng.choice(SIZES)
        side = rng.uniform(*_SIZE_RANGE[size]) / 2  # of the image
        row, col = quadrant.split()
        # near the quadrant's centre: each shape stays within the vision tower's patches for its quadrant
        slack = (0.5 - side) / 2 * _JITTER
        x0 = (0.75 if col == "right" else 0.25) - side / 2 + rng.uniform(-slack, slack)
        y0 = (0.75 if row == "bottom" else 0.25) - side / 2 + rng.uniform(-slack, slack)
        box = tuple(round(v, 3) for v in (x0, y0, x0 + side, y0 + side))
        shapes.append(Shape(rng.choice(list(COLOURS)), rng.choice(SHAPES), size, quadrant, box))
    return Scene(scene_id, tuple(shapes), rng.randint(60, 120), rng.randrange(1 << 30))


def draw(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """The scene's picture: a noisy grey background and its shapes, `size` pixels square."""
    rng = np.random.default_rng(scene.seed)
    big = size * _SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), (scene.background,) * 3)
    pen = ImageDraw.Draw(canvas)
    for shape in scene.shapes:
        jitter = rng.integers(-18, 19, size=3)
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[shape.colour], jitter))
        x1, y1, x2, y2 = (v * big for v in shape.bbox)
        if shape.kind == "circle":
            pen.ellipse((x1, y1, x2, y2), fill=fill)
        elif shape.kind == "square":
            pen.rectangle((x1, y1, x2, y2), fill=fill)
        elif shape.kind == "triangle":
            pen.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=fill)
        else:  # cross: a plus sign, arms a third of the side thick
            t = (x2 - x1) / 3
            pen.rectangle((x1 + t, y1, x2 - t, y2), fill=fill)
            pen.rectangle((x1, y1 + t, x2, y2 - t), fill=fill)
    pixels = np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.int16)
    noise = rng.integers(-6, 7, size=pixels.shape)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))


def listing(items: list[str]) -> str:
    """`a, b and c`."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def describe_shape(shape: Shape) -> str:
    """`"a large red circle"`."""
    return f"a {shape.size} {shape.colour} {shape.kind}"


def with_article(words: str) -> str:
    """`"an orange square"`, `"a red circle"`."""
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def plural(kind: str) -> str:
    return kind + ("es" if kind.endswith(("s", "x")) else "s")


def count_phrase(n: int) -> str:
    return f"{NUMBER_WORDS[n]} shape{'s' if n != 1 else ''}"


def captions(scene: Scene, rng: random.Random) -> list[str]:
    """Four sentences that each describe the scene (the first names every shape, its size and place)."""
    shapes = list(scene.shapes)
    placed = [f"{describe_shape(s)} in the {s.quadrant}" for s in shapes]
    n = len(shapes)
    first = listing(placed)
    lines = [first[0].upper() + first[1:] + "."]
    named = listing([with_article(s.name) for s in shapes])
    lines.append(f"{count_phrase(n).capitalize()} on a grey background: {named}.")
    shuffled = rng.sample(shapes, n)
    lines.append(" ".join(f"The {s.quadrant} holds {describe_shape(s)}." for s in shuffled))
    kinds = sorted({s.kind for s in shapes}, key=SHAPES.index)
    lines.append(f"A simple picture of {listing([plural(k) for k in kinds]) if n > 1 else with_article(kinds[0])}"
                 f" in {listing(sorted({s.colour for s in shapes}, key=list(COLOURS).index))}.")
    return lines


def instances(scene: Scene) -> list[dict]:
    """The boxes in the datagen input layout: `[{"category": "red circle", "bbox": [x1, y1, x2, y2]}]`."""
    return [{"category": s.name, "bbox": list(s.bbox)} for s in scene.shapes]


def make_scenes(count: int, seed: int, prefix: str) -> list[Scene]:
    """`count` scenes with ids `{prefix}-00000`...; the same (count, seed, prefix) gives the same scenes."""
    rng = random.Random(f"{prefix}:{seed}")
    return [random_scene(rng, f"{prefix}-{i:05d}") for i in range(count)]


def write_scenes(scenes: list[Scene], folder: Union[str, Path], seed: int = 0, progress: bool = False) -> Path:
    """Writes `folder/images/<id>.png` and `folder/scenes.jsonl` (datagen input: id, image, captions,
    instances; `image` relative to `folder`); returns the JSONL's path."""
    from tqdm.auto import tqdm

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    path = folder / "scenes.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for scene in tqdm(scenes, desc=f"draw {folder.name} scenes", unit="img", disable=not progress):
            image = f"images/{scene.id}.png"
            draw(scene).save(folder / image)
            record = {"id": scene.id, "image": image, "captions": captions(scene, random.Random(f"{seed}:{scene.id}")),
                      "instances": instances(scene)}
            f.write(json.dumps(record) + "\n")
    return path


__all__ = ["COLOURS", "IMAGE_SIZE", "MAX_SHAPES", "NUMBER_WORDS", "QUADRANTS", "SHAPES", "SIZES", "Scene", "Shape",
           "captions", "count_phrase", "describe_shape", "draw", "instances", "listing", "make_scenes", "plural",
           "quadrant_of",
           "random_scene", "size_of", "with_article", "write_scenes"]
