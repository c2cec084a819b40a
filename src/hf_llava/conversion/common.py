"""What every conversion shares: reading checkpoint files, key accounting, sharded atomic writing.

- `weight_files` / `list_keys` / `load_tensors`: a checkpoint folder's shards, read one at a time
  (`safetensors.safe_open` for key listings, `torch.load(weights_only=True, mmap=True)` for `.bin`).
- `key_names`: on-disk key <-> parameter name, as this transformers line loads and saves them.
- `check_keys`: every source key consumed, every target parameter filled, or an error naming them.
- `ShardWriter`: streams converted tensors into `model-0000i-of-0000N.safetensors` shards plus the
  index, so memory stays near one shard (the library savers take a whole state dict at once).
- `TensorSource` / `write_converted`: the one loop every conversion runs (account, map, write).
(`hf_llava._io.atomic_output` builds the result beside DST and moves it into place only when
everything succeeded; a failure leaves no DST and an existing DST untouched.)
"""

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors import safe_open
import safetensors.torch
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME
from transformers.utils.hub import convert_file_size_to_int
from tqdm.auto import tqdm

from .._io import listed
from ..modeling import LlavaForConditionalGeneration

PathLike = Union[str, os.PathLike]
_MAX_LISTED = 20


def key_names(config) -> tuple[Callable[[str], str], dict[str, str]]:
    """How an hf-llava model of `config` names its tensors on disk, on this transformers line:
    (on-disk key -> parameter name, parameter name -> on-disk key), from a model built on the meta device.

    Loading renames as `from_pretrained` does (either layout: the saved names or the in-memory ones);
    saving reverses them as `save_pretrained` does, which gives transformers 4.57's llava layout on both
    lines (`language_model.model.*`, `language_model.lm_head.*`, `vision_tower.vision_model.*`,
    `multi_modal_projector.*`): the names 4.57, 5.x (through its llava mappings), vLLM and SGLang read.
    transformers' llava has the same parameter names, so llava-hf folders are written the same way.
    """
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    return model.checkpoint_key_renamer(), model.saved_key_names()


class ConversionError(ValueError):
    """A checkpoint that cannot be converted as asked; the message says what was found and what to do."""


def _listing(names) -> str:
    return listed(sorted(names), _MAX_LISTED)


def read_json(path: PathLike) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def weight_files(folder: PathLike) -> list[Path]:
    """The weight shards of a `save_pretrained`-style folder (safetensors preferred over `.bin`), in order."""
    folder = Path(folder)
    for index_name, single_name in ((SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME), (WEIGHTS_INDEX_NAME, WEIGHTS_NAME)):
        if (folder / index_name).is_file():
            weight_map = read_json(folder / index_name)["weight_map"]
            return [folder / name for name in sorted(set(weight_map.values()))]
        if (folder / single_name).is_file():
            return [folder / single_name]
    raise ConversionError(
        f"{folder}: no model weights found (expected {SAFE_WEIGHTS_NAME}, {SAFE_WEIGHTS_INDEX_NAME}, "
        f"{WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}); pass the folder that holds the checkpoint."
    )


def load_tensors(path: PathLike) -> dict[str, torch.Tensor]:
    """One weight file: `.safetensors` through safetensors, anything else through `torch.load(weights_only=True)`."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return safetensors.torch.load_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) torch files cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def list_keys(path: PathLike) -> list[str]:
    """Tensor names of one weight file without reading the tensors (for `.bin`, a memory-mapped load)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        with safe_open(path, framework="pt") as f:
            return list(f.keys())
    return list(load_tensors(path).keys())


def expected_state(model_cls, config) -> dict[str, tuple]:
    """Parameter/buffer names and shapes `model_cls(config)` saves, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = model_cls(config)
    state = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if getattr(config.get_text_config(), "tie_word_embeddings", False):
        for name in getattr(model, "_tied_weights_keys", None) or []:
            state.pop(name, None)
    return state


def check_keys(unknown: list[str], produced: list[str], expected: dict, source: PathLike) -> None:
    """Raise `ConversionError` when a source key is unused, a target key is unfilled or filled twice."""
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} source key(s) that no rule of this conversion consumes: {_listing(unknown)}")
    duplicates = {k for k in produced if produced.count(k) > 1} if len(set(produced)) != len(produced) else set()
    if duplicates:
        problems.append(f"target key(s) filled by more than one source key: {_listing(duplicates)}")
    missing = set(expected) - set(produced)
    if missing:
        problems.append(f"{len(missing)} target parameter(s) that nothing fills: {_listing(missing)}")
    extra = set(produced) - set(expected)
    if extra:
        problems.append(f"mapped key(s) the target model does not have: {_listing(extra)}")
    if problems:
        raise ConversionError(
            f"Cannot convert {source}: " + "; ".join(problems) + ". Check that the source layout and the "
            "--from option match (and that the checkpoint is complete); nothing was written."
        )


class ShardWriter:
    """Writes tensors into safetensors shards of at most `max_shard_size` bytes, then the index.

    Tensors arrive under their parameter names, are checked against the `expected` shapes and are stored
    under their on-disk names (`saved_names`, see `key_names`); one shard is held in memory at a time.
    """

    def __init__(
        self, folder: PathLike, expected: dict[str, tuple], saved_names: dict[str, str],
        max_shard_size: Union[int, str] = "5GB",
    ):
        self.folder = Path(folder)
        self.expected = expected
        self.saved_names = saved_names
        self.max_bytes = convert_file_size_to_int(max_shard_size)
        self.buffer: dict[str, torch.Tensor] = {}
        self.buffer_bytes = 0
        self.shards: list[list[str]] = []
        self.total_size = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        shape = tuple(tensor.shape)
        if self.expected.get(name) != shape:
            raise ConversionError(
                f"Tensor {name!r} has shape {shape}, but the target model expects {self.expected.get(name)}; "
                "the checkpoint and its config.json disagree."
            )
        nbytes = tensor.numel() * tensor.element_size()
        if self.buffer and self.buffer_bytes + nbytes > self.max_bytes:
            self._flush()
        # A fresh contiguous copy: safetensors refuses views and tensors sharing storage (tied weights).
        self.buffer[self.saved_names[name]] = tensor.detach().to("cpu").contiguous().clone()
        self.buffer_bytes += nbytes
        self.total_size += nbytes

    def _flush(self) -> None:
        index = len(self.shards)
        safetensors.torch.save_file(self.buffer, self.folder / f"shard-{index:05d}.tmp", metadata={"format": "pt"})
        self.shards.append(list(self.buffer))
        self.buffer, self.buffer_bytes = {}, 0

    def close(self) -> list[str]:
        """Flush, name the shards as transformers does, write the index when sharded; returns the file names."""
        if self.buffer or not self.shards:
            self._flush()
        count = len(self.shards)
        names = [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)] if count > 1 else [
            SAFE_WEIGHTS_NAME
        ]
        weight_map = {}
        for i, (name, keys) in enumerate(zip(names, self.shards)):
            os.replace(self.folder / f"shard-{i:05d}.tmp", self.folder / name)
            weight_map.update({key: name for key in keys})
        if count > 1:
            index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(weight_map.items()))}
            with open(self.folder / SAFE_WEIGHTS_INDEX_NAME, "w", encoding="utf-8") as f:
                json.dump(index, f, indent=2)
                f.write("\n")
        return names


class _Drop(Enum):
    DROP = "drop"


# A key rule returns a target name, DROP for a source key consumed on purpose and not written (a derived
# buffer, a tied weight), or None for a key it does not know.
DROP = _Drop.DROP
KeyRule = Callable[[str], Union[str, _Drop, None]]


@dataclass
class TensorSource:
    """Tensors to convert: their names (`keys`), how to read them (`load`, one call, one shard in memory)
    and the rule mapping a source name to a target name (`DROP` to consume it unwritten, None if unknown)."""

    label: str
    keys: list[str]
    load: Callable[[], dict[str, torch.Tensor]]
    map_key: KeyRule


def file_sources(files: list[Path], map_key: KeyRule) -> list[TensorSource]:
    """One `TensorSource` per weight file."""
    return [TensorSource(str(path), list_keys(path), lambda path=path: load_tensors(path), map_key) for path in files]


def write_converted(
    sources: list[TensorSource],
    expected: dict[str, tuple],
    saved_names: dict[str, str],
    folder: PathLike,
    source_name: PathLike,
    max_shard_size: Union[int, str] = "5GB",
    transform: Optional[Callable[[str, torch.Tensor], torch.Tensor]] = None,
    progress: bool = True,
) -> list[str]:
    """Account for every key (before reading any tensor), then stream each source into safetensors shards.

    Tensors are written under `saved_names[target_name]` (see `key_names`); `transform(target_name, tensor)`
    may change a tensor (dtype, new embedding rows). Returns the shard names.
    """
    unknown, produced = [], []
    for source in sources:
        for key in source.keys:
            target = source.map_key(key)
            if target is None:
                unknown.append(f"{key} (in {Path(source.label).name})")
            elif target is not DROP:
                produced.append(target)
    check_keys(unknown, produced, expected, source_name)
    writer = ShardWriter(folder, expected, saved_names, max_shard_size)
    bar = tqdm(total=len(produced), desc="converting tensors", unit="tensor", disable=not progress, leave=False)
    for source in sources:
        tensors = source.load()
        for key in source.keys:
            target = source.map_key(key)
            if target is DROP:
                continue
            tensor = tensors[key]
            writer.add(target, transform(target, tensor) if transform else tensor)
            bar.update(1)
        del tensors
    bar.close()
    return writer.close()


def copy_if_present(src: PathLike, dst: PathLike, names: tuple[str, ...]) -> None:
    """Copy the files in `names` that exist in folder `src` to folder `dst`."""
    for name in names:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, Path(dst) / name)


