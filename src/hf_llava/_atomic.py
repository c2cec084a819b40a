"""Output folders: the one overwrite rule, and all-or-nothing writing (complete or not at all).

Every command that writes a folder (convert, export-onnx, train) refuses an existing non-empty one
unless told to replace it (`overwrite=True`, `--overwrite`), and builds its result beside it.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Union


def _swap_into_place(tmp: Path, dst: Path) -> None:
    """Replace `dst` with `tmp` by renames; an existing `dst` is restored if the swap fails."""
    if not dst.exists():
        os.replace(tmp, dst)
        return
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    os.replace(dst, old)
    try:
        os.replace(tmp, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_folder(dst: Union[str, os.PathLike], tag: str = "partial") -> Iterator[Path]:
    """Yields an empty folder beside `dst` to write into.

    When the block succeeds, the folder replaces `dst` (an existing `dst` is swapped out only then);
    when it raises (an error, Ctrl-C), the folder is removed and `dst` is left as it was. The folder
    gets the permissions of any new folder (umask), not `mkdtemp`'s 0700.
    """
    dst = Path(dst).absolute()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.{tag}-", dir=dst.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        yield tmp
        _swap_into_place(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_output_folder(dst: Union[str, os.PathLike], overwrite: bool = False, what: str = "output folder") -> Path:
    """Refuse an existing, non-empty `dst` unless `overwrite`; returns `dst` as an absolute path.

    Call it before any slow work (loading a model) so that a refused run costs nothing.
    """
    dst = Path(dst).absolute()
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())) and not overwrite:
        raise FileExistsError(
            f"{what} {dst} already exists and is not empty; choose another folder or pass overwrite=True "
            "to replace it (it is replaced only once the new one is complete)."
        )
    return dst


@contextmanager
def atomic_output(dst: Union[str, os.PathLike], overwrite: bool = False, what: str = "output folder",
                  tag: str = "partial") -> Iterator[Path]:
    """`check_output_folder`, then `atomic_folder`: a temporary folder that becomes `dst` on success."""
    dst = check_output_folder(dst, overwrite, what)
    with atomic_folder(dst, tag=tag) as tmp:
        yield tmp
