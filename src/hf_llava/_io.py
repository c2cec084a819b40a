"""Files and output plumbing every command shares: journals, all-or-nothing writes, digests, short listings.

- Output folders (convert, export-onnx, train, demo): an existing non-empty one is refused unless
  `overwrite=True`; the result is built beside it and swapped in only when complete (`atomic_output`).
- JSON files (datagen's data, eval's reports): written to a temp file, fsynced, then renamed into place.
- Journals (datagen's samples, eval's answers and reviews): `PATH.jsonl` with a header naming the run
  (`{"hf_llava_journal": 1, "run": {...}}`) and one fsynced line per result (`{"key", "kind", "value"}`),
  so a killed run loses only its work in flight. `open_journal` holds the one resume rule.
- Reading JSONL inputs, content digests, "a, b, c (+4 more)" listings and progress for a terminal or a log.

It imports nothing of hf_llava: every module may use it.
"""

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional, Union

PathLike = Union[str, os.PathLike]
_JOURNAL_VERSION = 1
_MAX_LISTED = 5


def listed(items: Iterable, limit: int = _MAX_LISTED, sep: str = ", ") -> str:
    """The first `limit` items joined by `sep`, then a count of the rest: `a, b, c (+4 more)`."""
    items = [str(i) for i in items]
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return sep.join(items[:limit]) + more


def digest(value: Any, length: int = 64) -> str:
    """The first `length` hex digits of the sha256 of `value`: text or bytes as they are, other data as
    canonical JSON (sorted keys). What a journal's run is compared on."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    elif not isinstance(value, bytes):
        value = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return hashlib.sha256(value).hexdigest()[:length]


def file_digest(paths: Iterable[PathLike], length: int = 64) -> str:
    """`digest` of the files' contents, one after the other, read in 1 MiB chunks."""
    sha = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                sha.update(chunk)
    return sha.hexdigest()[:length]


def read_jsonl(path: PathLike, flag: str) -> list[tuple[int, dict]]:
    """`(line number, object)` for each non-blank line of a JSONL file; `flag` names the file in errors."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag}={path}: no such file; pass a JSONL file (one JSON object a line).")
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{flag}={path}, line {line_no}: not valid JSON ({err.msg}); "
                                 "one object a line.") from None
            if not isinstance(record, dict):
                raise ValueError(f"{flag}={path}, line {line_no}: expected a JSON object, got a "
                                 f"{type(record).__name__}.")
            records.append((line_no, record))
    if not records:
        raise ValueError(f"{flag}={path}: no records (the file is empty).")
    return records


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def write_json_atomic(path: PathLike, data: Any) -> None:
    """Write `data` as JSON to `path` all at once: a temp file beside it, fsynced, then `os.replace`."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the data from a shared training job
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
def atomic_folder(dst: PathLike, tag: str = "partial") -> Iterator[Path]:
    """Yields an empty folder beside `dst` to write into.

    When the block succeeds, the folder replaces `dst` (an existing `dst` is swapped out only then);
    when it raises (an error, Ctrl-C), the folder is removed and `dst` is left as it was. The folder
    gets the permissions of any new folder (umask), not `mkdtemp`'s 0700.
    """
    dst = Path(dst).absolute()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.{tag}-", dir=dst.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        _swap_into_place(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_output_folder(dst: PathLike, overwrite: bool = False, what: str = "output folder") -> Path:
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
def atomic_output(dst: PathLike, overwrite: bool = False, what: str = "output folder",
                  tag: str = "partial") -> Iterator[Path]:
    """`check_output_folder`, then `atomic_folder`: a temporary folder that becomes `dst` on success."""
    dst = check_output_folder(dst, overwrite, what)
    with atomic_folder(dst, tag=tag) as tmp:
        yield tmp


def _is_digest(value: Any) -> bool:
    """Digests (and dicts of them) are named in messages, not quoted: their values say nothing to a person."""
    if isinstance(value, dict):
        return True
    return isinstance(value, str) and len(value) >= 12 and all(c in "0123456789abcdef" for c in value)


class Journal:
    """A results journal: `load` an existing one, `start` appending, `append` one result at a time.

    `run` is the header's run (None before one is read or written); `done` maps `(key, kind)` to the value.
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self.run: Optional[dict] = None
        self.done: dict[tuple[str, str], Any] = {}
        self._intact = 0  # bytes up to the last newline: a torn last line is cut off before appending
        self._file = None

    def load(self) -> "Journal":
        """Read the header and results (no-op without a file). Each line was written with its newline in
        one write, so only the text after the last newline can be torn (a kill mid-write): it is left out,
        even when it happens to parse; a bad line elsewhere raises ValueError naming it."""
        if not self.path.is_file():
            return self
        data = self.path.read_bytes()
        *lines, tail = data.split(b"\n")
        self._intact = len(data) - len(tail)
        records = []
        for line_no, line in enumerate(lines, 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if not isinstance(record, dict):
                    raise ValueError(f"line {line_no}: not a journal record")
                records.append(record)
        if not records:
            return self
        if records[0].get("hf_llava_journal") != _JOURNAL_VERSION or not isinstance(records[0].get("run"), dict):
            raise ValueError("line 1: not an hf-llava journal header")
        self.run = records[0]["run"]
        for record in records[1:]:
            # hf-llava 0.1.0 spelled the fields image_id / type / sample: its journals resume too.
            key = (str(record.get("key", record.get("image_id"))), str(record.get("kind", record.get("type"))))
            self.done.setdefault(key, record.get("value", record.get("sample")))  # a later copy is never written
        return self

    def differences(self, run: dict) -> list[str]:
        """How `run` differs from the journal's run, in words (empty when it is the same run, or none)."""
        if self.run is None:
            return []
        changed = []
        for key, new in run.items():
            old = self.run.get(key)
            if isinstance(old, dict) and isinstance(new, dict):  # per-part digests: only the parts both name
                old, new = ({k: v for k, v in d.items() if k in old and k in new} for d in (old, new))
            if old != new:
                changed.append(f"other {key}" if _is_digest(new) else f"{key} {old} then, {new} now")
        return changed

    def results(self, kind: str) -> dict[str, Any]:
        """`{key: value}` of one kind."""
        return {key: value for (key, k), value in self.done.items() if k == kind}

    def start(self, run: dict, fresh: bool) -> None:
        """Start appending: `fresh` (or no header yet) writes a new header for `run`; else cut a torn tail."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fresh or self.run is None:
            self.done, self.run = {}, run
            self._file = open(self.path, "wb")
            self._write({"hf_llava_journal": _JOURNAL_VERSION, "run": run})
        else:
            self._file = open(self.path, "r+b")
            self._file.truncate(self._intact)  # a torn last line must not glue onto the next record
            self._file.seek(self._intact)

    def _write(self, record: dict) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())  # a SIGKILL or a power cut after this line cannot lose the result

    def append(self, key: str, kind: str, value: Any) -> None:
        self._write({"key": key, "kind": kind, "value": value})
        self.done[(key, kind)] = value

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def open_journal(path: PathLike, run: dict, *, overwrite: bool, output: PathLike) -> tuple[Journal, bool]:
    """`(journal, fresh)` for `run`, the one resume rule; nothing is written (`journal.start` does that).

    A journal of the same run is resumed (with `overwrite` too: its results are this run's). One with no
    result yet, or no journal, starts afresh: nothing to keep. One of another run (other settings, listed in
    the message) or a damaged one is refused unless `overwrite`, which starts it afresh. `output` is the
    file the journal belongs to, named in the messages.
    """
    journal = Journal(path)
    name = journal.path.name
    try:
        journal.load()
    except ValueError as err:
        if not overwrite:
            raise ValueError(f"output={output}: {name} beside it is not a readable journal ({err}); pass "
                             "overwrite=True to start it over, or choose another output.") from None
        return Journal(path), True
    changed = journal.differences(run)
    if journal.done and changed and not overwrite:
        raise FileExistsError(f"output={output}: {name} beside it is from another run ({'; '.join(changed)}); "
                              "pass overwrite=True to start it over, or choose another output.")
    if journal.done and not changed:
        return journal, False
    journal.done = {}
    return journal, True


class Progress:
    """Progress of `total` steps: a bar on a terminal; in a log (stderr not a terminal) a plain line every
    `every` seconds and at the end, since a bar's carriage returns garble a log file."""

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0, enabled: bool = True,
                 every: float = 60.0):
        self.total, self.desc, self.unit, self.done, self.every = total, desc, unit, initial, every
        self._initial = initial
        self.counts: dict[str, int] = {}
        self._bar = self._last = None
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
        elif enabled:
            self._last = time.monotonic()

    def update(self, n: int = 1, **counts: int) -> None:
        """`n` more steps done; `counts` (e.g. failed=2) are shown beside the count."""
        self.done += n
        self.counts.update(counts)
        if self._bar is not None:
            self._bar.set_postfix(self.counts, refresh=False)
            self._bar.update(n)
        elif self._last is not None and time.monotonic() - self._last >= self.every:
            self._line()

    def _line(self) -> None:
        counts = "".join(f", {value} {key}" for key, value in self.counts.items())
        print(f"{self.desc}: {self.done}/{self.total} {self.unit}{counts}", file=sys.stderr, flush=True)
        self._last = time.monotonic()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._last is not None:
            if self.done > self._initial:
                self._line()
            self._last = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Journal", "Progress", "atomic_folder", "atomic_output", "check_output_folder", "digest", "file_digest",
           "listed", "open_journal", "read_jsonl", "write_json_atomic"]
