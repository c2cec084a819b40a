"""The output folder of a training run: refusing an earlier run's folder, and leaving nothing behind on failure.

`hf-llava train` calls these around the `Trainer` (which keeps its own semantics: it writes into any folder).
A folder holding files is refused unless the run resumes from a checkpoint or `overwrite` says to train into
it anyway (files of the same name are replaced, the others kept), with `hf_llava._io.check_output_folder`'s
rule. A run that fails before writing a checkpoint or a model removes what it created.
"""

import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Union

from .._io import check_output_folder

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
_MODEL_FILES = ("config.json", "adapter_config.json")  # what `save_model` writes: a usable result


def check_training_output(output_dir: PathLike, overwrite: bool = False,
                          resume: Optional[str] = None) -> Optional[str]:
    """Refuse an `output_dir` that holds files unless `resume` or `overwrite`; call it before loading anything.

    `resume` is `"last"` (the highest `checkpoint-N` of `output_dir`) or a checkpoint folder. Returns the
    checkpoint to pass as `Trainer.train(resume_from_checkpoint=...)`, or None for a fresh run.
    """
    output = Path(output_dir).absolute()
    if resume is None:
        try:
            check_output_folder(output, overwrite, what="output folder")
        except FileExistsError as error:
            raise FileExistsError(
                f"output={str(output)!r} already holds files (an earlier run?); pass resume='last' to continue from "
                "its last checkpoint, overwrite=True to train into it anyway, or choose another folder."
            ) from error
        return None
    if resume == "last":
        from transformers.trainer_utils import get_last_checkpoint

        checkpoint = get_last_checkpoint(str(output)) if output.is_dir() else None
        if checkpoint is None:
            raise FileNotFoundError(f"resume='last': output={str(output)!r} holds no checkpoint-N folder to resume "
                                    "from; train without resume= or name a checkpoint folder.")
        return checkpoint
    if not os.path.isdir(resume):
        raise FileNotFoundError(f"resume={resume!r}: no such checkpoint folder; pass a checkpoint-N folder or 'last'.")
    return resume


@contextmanager
def training_output(output_dir: PathLike) -> Iterator[Path]:
    """Yields `output_dir` (absolute); if the block raises before a checkpoint or a model is written there,
    what this run created is removed (a folder that did not exist, with any parents it needed, or the new
    entries of one that did)."""
    output = Path(output_dir).absolute()
    top = output  # the highest folder this run creates, when the output does not exist yet
    while not top.parent.exists():
        top = top.parent
    before = set(os.listdir(output)) if output.is_dir() else None
    started = time.time() - 2  # file times can lag the clock by a tick
    try:
        yield output
    except BaseException:
        if os.environ.get("LOCAL_RANK", "0") == "0":  # one process per machine tidies up
            _remove_created(output, top, before, started)
        raise


def _remove_created(output: Path, top: Path, before: Optional[set], started: float) -> None:
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    entries = set(os.listdir(output)) if output.is_dir() else set()
    written = [name for name in entries if (name.startswith(f"{PREFIX_CHECKPOINT_DIR}-") or name in _MODEL_FILES)
               and os.path.getmtime(output / name) >= started]
    if written:
        logger.warning("The run failed; %s keeps what it wrote (%s).", output, ", ".join(sorted(written)))
        return
    if before is None:
        if top.exists():
            shutil.rmtree(top, ignore_errors=True)
        return
    for name in entries - before:
        path = output / name
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


__all__ = ["check_training_output", "training_output"]
