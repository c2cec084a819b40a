"""The demo's held-out splits: no validation or test scene shows what pretraining, training or a prompt showed."""

import json
import sys
from pathlib import Path

from hf_llava.demo import DATAGEN_TYPES, FULL, QUICK, SEED, make_world
from hf_llava.world.scenes import make_scenes, quadrant_of, size_of
from hf_llava.world.splits import (content, heldout_scenes, pretraining_contents, pretraining_scenes,
                                   prompt_example_contents)

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _pretraining_defaults():
    """The pretraining script's own defaults (its parser, not a restatement of them)."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        from pretrain_world import SPLIT, parse_args
    finally:
        sys.path.remove(str(SCRIPTS))
    args = parse_args(["--output", "unused"])
    return args.scenes, args.seed, SPLIT


def _contents(scenes_jsonl: Path) -> list:
    """What each written scene shows, read back from its boxes as datagen reads them."""
    rows = [json.loads(line) for line in scenes_jsonl.read_text().splitlines()]
    return [frozenset((quadrant_of(i["bbox"]), size_of(i["bbox"]), *i["category"].split()) for i in row["instances"])
            for row in rows]


def test_the_pretraining_scenes_are_the_ones_the_script_trains_on():
    count, seed, split = _pretraining_defaults()
    assert make_scenes(count, seed, split) == pretraining_scenes()


def test_held_out_splits_share_no_content_with_pretraining_training_prompts_or_each_other(tmp_path, monkeypatch):
    import hf_llava.world.scenes as scenes

    monkeypatch.setattr(scenes, "draw", lambda scene, size=8: scenes.Image.new("RGB", (size, size)))  # contents only
    for size in (QUICK, FULL):
        world = make_world(tmp_path / ("quick" if size is QUICK else "full"), size)
        train = make_scenes(max(FULL.train_scenes, QUICK.train_scenes), SEED, "train")
        seen = pretraining_contents() | {content(s) for s in train}
        seen |= prompt_example_contents(DATAGEN_TYPES)
        val = _contents(world["val_questions"].parent / "scenes.jsonl")
        test = _contents(world["test_questions"].parent / "scenes.jsonl")
        assert len(val) == size.val_scenes and len(test) == size.test_scenes
        assert not seen & set(val) and not seen & set(test) and not set(val) & set(test)
        assert len(set(test)) == len(test) and len(set(val)) == len(val)
        assert content(world["example_scene"]) not in seen | set(val) | set(test)
        # every one-shape content is among the pretraining scenes: held-out scenes show 2-4 shapes
        assert min(len(c) for c in val + test) == 2
        assert world["splits"]["test"]["scenes"] == size.test_scenes


def test_rejection_sampling_is_seeded_and_a_smaller_split_is_a_prefix():
    seen = {content(s) for s in pretraining_scenes()}
    assert heldout_scenes(20, 0, "test", seen) == heldout_scenes(40, 0, "test", seen)[:20]
    assert all(content(s) not in seen for s in heldout_scenes(40, 0, "test", seen))
