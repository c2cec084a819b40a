"""The files of an evaluation run: the report, and the journals beside it that make a rerun resume.

`REPORT.json` comes with `REPORT.answers.jsonl` (the model's answers) and, for LLaVA-Bench,
`REPORT.reviews.jsonl` (the judge's parsed reviews). Both are `hf_llava._io` journals (a header naming the
run, then one fsynced line per result, `key` the question id), so a run killed mid-way loses only the work
in flight, and a judge run redone later reuses the answers instead of generating them again.

The rule: an existing report is refused unless `overwrite=True`; for the journals, `_io.open_journal`'s
rule (one of the same run, same model and questions, or same judge, prompt and answers, is always reused;
one of another run is refused unless `overwrite=True`, which starts it afresh). Everything is checked
before any model or judge time.
"""

import os
from pathlib import Path
from typing import Union

ANSWERS = "answers"
REVIEWS = "reviews"
DIGEST_CHARS = 16  # hex digits of the digests a run records: enough to tell runs apart, short to read


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


__all__ = ["ANSWERS", "DIGEST_CHARS", "REVIEWS", "beside", "check_report"]
