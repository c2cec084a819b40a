"""The run's journal: every accepted sample is appended (flushed, fsynced) the moment it arrives.

`OUTPUT.journal.jsonl` starts with a header naming the run (`{"hf_llava_journal": 1, "run": {...}}`: input
and prompt digests, types, seed, model); each further line is `{"image_id", "type", "sample"}`. A run that
is killed loses only its requests in flight: the next one reads the journal, skips what is done and
appends the rest. A torn last line (killed mid-write) is cut off before appending; a bad line elsewhere is
an error. The output JSON is written from the journal, atomically (temp file + `os.replace`).
"""

import json
import os
import tempfile
from pathlib import Path
from typing import Optional

JOURNAL_SUFFIX = ".journal.jsonl"
_VERSION = 1


def journal_path(output) -> Path:
    return Path(f"{os.fspath(output)}{JOURNAL_SUFFIX}")


def _read_lines(path: Path) -> tuple[list[dict], int]:
    """The journal's records and the byte length of its intact part.

    Each record is written with its newline in one write, so only the text after the last newline can be
    torn (a kill mid-write); it is left out, even when it happens to parse.
    """
    data = path.read_bytes()
    *complete, tail = data.split(b"\n")
    records = []
    for line_no, line in enumerate(complete, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            record = err
        if not isinstance(record, dict):
            raise ValueError(f"{path}, line {line_no}: not a journal record; the journal is damaged. Pass "
                             "overwrite=True to start over, or choose another output.")
        records.append(record)
    return records, len(data) - len(tail)


class Journal:
    """Read an existing journal (`load`) or start one (`start`); `append` one sample at a time."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.run: Optional[dict] = None
        self.done: dict[tuple[str, str], dict] = {}  # (image_id, type) -> sample
        self._intact = 0
        self._file = None

    def load(self) -> "Journal":
        """Read the header and samples (no-op when there is no journal, or only a torn header)."""
        if not self.path.is_file():
            return self
        records, self._intact = _read_lines(self.path)
        if not records:
            return self
        header = records[0]
        if header.get("hf_llava_journal") != _VERSION or not isinstance(header.get("run"), dict):
            raise ValueError(f"{self.path}, line 1: not an hf-llava datagen journal; pass overwrite=True to "
                             "replace it, or choose another output.")
        self.run = header["run"]
        for record in records[1:]:
            key = (str(record.get("image_id")), str(record.get("type")))
            self.done.setdefault(key, record.get("sample"))  # the first copy wins; a later one is never written
        return self

    def differences(self, run: dict) -> list[str]:
        """How `run` differs from the journal's run, in words (empty when it is the same run)."""
        if self.run is None:
            return []
        changed = []
        for key, new in run.items():
            old = self.run.get(key)
            if key == "prompts" and isinstance(old, dict):  # only the prompts of the types both runs ask for
                old, new = ({k: v for k, v in d.items() if k in old and k in new} for d in (old, new))
            if old == new:
                continue
            changed.append(f"other {key}" if key in ("inputs", "prompts") else f"{key} {old} then, {new} now")
        return changed

    def open(self, run: dict, fresh: bool) -> None:
        """Start appending: `fresh` (or no usable header) writes a new header; else cut a torn tail."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fresh or self.run is None:
            self.done, self.run = {}, run
            self._file = open(self.path, "wb")
            self._write({"hf_llava_journal": _VERSION, "run": run})
        else:
            self._file = open(self.path, "r+b")
            self._file.truncate(self._intact)  # a torn last line must not glue onto the next record
            self._file.seek(self._intact)

    def _write(self, record: dict) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())  # a SIGKILL or a power cut after this line cannot lose the sample

    def append(self, image_id: str, kind: str, sample: dict) -> None:
        self._write({"image_id": image_id, "type": kind, "sample": sample})
        self.done[(image_id, kind)] = sample

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def write_json_atomic(path, data) -> None:
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
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the data from a shared training job
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


__all__ = ["JOURNAL_SUFFIX", "Journal", "journal_path", "write_json_atomic"]
