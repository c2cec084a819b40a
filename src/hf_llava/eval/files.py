"""The files of an evaluation run: the report, and the journals beside it that make a rerun resume.

`REPORT.json` comes with `REPORT.answers.jsonl` (the model's answers) and, for LLaVA-Bench,
`REPORT.reviews.jsonl` (the judge's parsed reviews). Both are datagen's journal (`hf_llava.datagen.journal`:
a header naming the run, then one fsynced line per result), so a run killed mid-way loses only the work in
flight, and a judge run redone later reuses the answers instead of generating them again.

The rule: an existing report is refused unless `overwrite=True`; a journal of the same run (same model and
questions, or same judge, prompt and answers) is always reused; a journal of another run is refused unless
`overwrite=True`, which starts it afresh. Everything is checked before any model or judge time.
"""

import os
from pathlib import Path
from typing import Union

from ..datagen.journal import Journal, write_json_atomic

ANSWERS = "answers"
REVIEWS = "reviews"


def beside(report: Union[str, os.PathLike], kind: str) -> Path:
    """`REPORT.<kind>.jsonl` next to the report (`report.json` -> `report.answers.jsonl`)."""
    report = Path(report).absolute()
    return report.with_name(f"{report.stem}.{kind}.jsonl")


def check_report(report: Union[str, os.PathLike], overwrite: bool) -> Path:
    """The report's absolute path; an existing one is refused unless `overwrite` (the rule of every output)."""
    report = Path(report).absolute()
    if report.is_dir():
        raise IsADirectoryError(f"output={report} is a folder; pass the path of the report JSON to write.")
    if report.exists() and not overwrite:
        raise FileExistsError(f"output={report} already exists; pass overwrite=True to replace it (once the new "
                              "report is complete), or choose another output.")
    return report


def open_journal(path: Path, run: dict, overwrite: bool, output: Path) -> tuple[Journal, bool]:
    """`(journal, fresh)`: the journal's finished results when it is this `run`'s, else a fresh start.

    Nothing is written here (`journal.open(run, fresh)` does, once every check has passed).
    """
    try:
        journal = Journal(path).load()
    except ValueError as err:
        if overwrite:
            return Journal(path), True
        raise ValueError(f"output={output}: {path.name} beside it is not a results journal (damaged, or written by "
                         "something else); pass overwrite=True to replace it, or choose another output.") from err
    if journal.run is None:
        return journal, True
    changed = journal.differences(run)
    if not changed:
        return journal, False
    if not overwrite:
        raise FileExistsError(f"output={output}: {path.name} beside it is from another run ({'; '.join(changed)}); "
                              "pass overwrite=True to start it over, or choose another output.")
    journal.done = {}
    return journal, True


def results(journal: Journal, kind: str) -> dict[str, dict]:
    """`{question_id (str): result}` of one kind from a loaded journal."""
    return {key: value for (key, k), value in journal.done.items() if k == kind}


def write_report(path: Path, report: dict) -> None:
    """The report JSON, written at once (temp file + rename): a killed run never leaves half a report."""
    write_json_atomic(path, report)


__all__ = ["ANSWERS", "REVIEWS", "beside", "check_report", "open_journal", "results", "write_report"]
