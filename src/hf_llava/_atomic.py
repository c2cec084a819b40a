"""All-or-nothing output folders: what conversions and exports write appears complete or not at all."""

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
