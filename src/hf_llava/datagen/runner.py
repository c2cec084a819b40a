"""The datagen run: symbolic images x types -> teacher requests -> parsed samples -> journal -> LLaVA JSON.

Everything that can be wrong with the inputs, the prompts or the output is checked before the first
request and before anything is written. Samples are journaled as replies arrive in `OUTPUT.journal.jsonl`
(`hf_llava._io.Journal`: a header naming the run, its inputs' and prompts' digests, types, seed and model;
then a line per sample, `key` the image id, `kind` the type), so a killed run resumes where it stopped;
the LLaVA JSON is written at the end, in input order, atomically.
Each sample's random choices (where `<image>` goes, which "describe" instruction a detail sample gets)
are seeded by (seed, image id, type): a resumed run makes the same ones.
"""

import logging
import os
import random
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional, Sequence, Union

from .._io import Journal, Progress, file_digest, open_journal, write_json_atomic
from ..data.llava_json import IMAGE_PLACEHOLDER
from ..data.symbolic import SymbolicImage, render_context
from .context import read_coco, read_symbolic_jsonl
from .parsers import TYPES, ReplyRejected, check_types, parse_reply
from .prompt_sets import PromptSet, load_prompts

logger = logging.getLogger(__name__)
JOURNAL_SUFFIX = ".journal.jsonl"


def journal_path(output: Union[str, os.PathLike]) -> Path:
    """`OUTPUT.journal.jsonl`: the journal beside the output that makes a rerun resume."""
    return Path(f"{os.fspath(output)}{JOURNAL_SUFFIX}")


@dataclass
class TypeCounts:
    """One type's tally for a run; `retried` sums the client's retries over the requests."""

    requested: int = 0
    generated: int = 0
    rejected: int = 0
    failed: int = 0
    retried: int = 0
    resumed: int = 0  # done by an earlier run (in the journal), not requested again


@dataclass
class DatagenSummary:
    counts: dict[str, TypeCounts]
    journal: Path
    output: Optional[Path] = None  # None when no sample exists (nothing written)
    samples: int = 0
    total: TypeCounts = field(init=False)

    def __post_init__(self):
        self.total = TypeCounts(**{f.name: sum(getattr(c, f.name) for c in self.counts.values())
                                   for f in fields(TypeCounts)})

    def format(self) -> str:
        names = [f.name for f in fields(TypeCounts)]
        rows = [["type", *names]] + [[kind, *(str(getattr(c, n)) for n in names)]
                                     for kind, c in [*self.counts.items(), ("total", self.total)]]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in
                                   enumerate(zip(row, widths))) for row in rows)


def read_images(input: Optional[str] = None, coco_instances: Optional[str] = None,
                coco_captions: Optional[str] = None, limit: Optional[int] = None) -> list[SymbolicImage]:
    """The symbolic images of a captions + boxes JSONL (`input`) or of COCO files, the first `limit` of them."""
    if (input is None) == (coco_instances is None and coco_captions is None):
        raise ValueError("pass either input=FILE (captions + boxes JSONL) or coco_instances=FILE with "
                         "coco_captions=FILE.")
    if input is None and (coco_instances is None or coco_captions is None):
        raise ValueError("coco_instances=FILE and coco_captions=FILE go together; pass both.")
    if limit is not None and limit <= 0:
        raise ValueError(f"limit={limit}: must be a positive number of images.")
    images = read_symbolic_jsonl(input) if input is not None else read_coco(coco_instances, coco_captions)
    return images[:limit] if limit is not None else images


def build_sample(image: SymbolicImage, kind: str, turns: list[dict], prompt_set: PromptSet, seed: int) -> dict:
    """A LLaVA sample from parsed turns: detail gets a drawn instruction; `<image>` before/after turn 1."""
    rng = random.Random(f"{seed}:{image.id}:{kind}")  # str seeds hash the same in every process
    turns = [dict(t) for t in turns]
    if kind == "detail":
        turns.insert(0, {"from": "human", "value": rng.choice(prompt_set.instructions)})
    first = turns[0]["value"]
    turns[0]["value"] = f"{IMAGE_PLACEHOLDER}\n{first}" if rng.random() < 0.5 else f"{first}\n{IMAGE_PLACEHOLDER}"
    return {"id": f"{image.id}_{kind}", "image": image.image, "conversations": turns}


def render_prompts(images: list[SymbolicImage], prompt_sets: dict[str, PromptSet]) -> dict[str, list[dict]]:
    """The messages each type would send for the first image (what `--dry-run` prints)."""
    return {kind: ps.messages(render_context(images[0])) for kind, ps in prompt_sets.items()}


def dry_run(*, input: Optional[str] = None, coco_instances: Optional[str] = None,
            coco_captions: Optional[str] = None, types: Union[str, Sequence[str]] = TYPES,
            prompts: Optional[str] = None) -> dict[str, list[dict]]:
    """Check the inputs and prompts and return one rendered prompt per type; sends and writes nothing."""
    kinds = check_types(types)
    prompt_sets = load_prompts(kinds, prompts)
    return render_prompts(read_images(input, coco_instances, coco_captions, limit=1), prompt_sets)


def _open_journal(output: Path, run: dict, overwrite: bool) -> tuple[Journal, bool]:
    """The journal to append to and whether to start it afresh (`open_journal`'s rule); an output that no
    journal of this run stands beside is refused unless `overwrite`."""
    if output.is_dir():
        raise IsADirectoryError(f"output={output} is a folder; pass the path of the JSON file to write.")
    journal, fresh = open_journal(journal_path(output), run, overwrite=overwrite, output=output)
    if fresh and output.exists() and not overwrite:
        raise FileExistsError(f"output={output} already exists and no journal of this run is beside it; pass "
                              "overwrite=True to replace it, or choose another output.")
    return journal, fresh


def generate(teacher, output: Union[str, os.PathLike], *, input: Optional[str] = None,
             coco_instances: Optional[str] = None, coco_captions: Optional[str] = None,
             types: Union[str, Sequence[str]] = TYPES, prompts: Optional[str] = None, limit: Optional[int] = None,
             seed: int = 0, overwrite: bool = False, progress: bool = True) -> DatagenSummary:
    """Ask `teacher` (a `hf_llava.teachers.Teacher`) for every (image, type) not yet done; write `output`.

    Resumes from `OUTPUT.journal.jsonl` when it belongs to the same run (inputs, types, prompts, seed,
    model); one of another run is refused unless `overwrite=True`, which starts over. Returns the per-type
    tally; `output` is None when no sample exists. `progress`: a bar on a terminal, plain lines in a log.
    A server that cannot serve any request raises `hf_llava.teachers.TeacherUnavailable` (what was
    journaled is kept: the same call resumes).
    """
    kinds = check_types(types)
    prompt_sets = load_prompts(kinds, prompts)
    images = read_images(input, coco_instances, coco_captions, limit)
    sources = [input] if input is not None else [coco_instances, coco_captions]
    run = {"inputs": file_digest(sources), "types": ",".join(kinds), "seed": seed, "model": teacher.name,
           "prompts": {kind: ps.digest for kind, ps in prompt_sets.items()}}
    output = Path(output).absolute()
    journal, fresh = _open_journal(output, run, overwrite)

    counts = {kind: TypeCounts() for kind in kinds}
    jobs = []
    for image in images:
        for kind in kinds:
            if (image.id, kind) in journal.done:
                counts[kind].resumed += 1
            else:
                jobs.append((image, kind))
                counts[kind].requested += 1
    journal.start(run, fresh=fresh)
    bar = Progress(len(images) * len(kinds), "datagen", "requests", initial=len(images) * len(kinds) - len(jobs),
                   enabled=progress)
    requests = (prompt_sets[kind].messages(render_context(image)) for image, kind in jobs)  # built as sent
    try:
        for index, reply in teacher.complete_iter(requests) if jobs else ():
            image, kind = jobs[index]
            tally = counts[kind]
            tally.retried += reply.retries
            if reply.ok:
                try:
                    turns = parse_reply(kind, reply.text)
                    if reply.truncated:  # well-formed so far, but its last answer is cut short
                        raise ReplyRejected("cut off at the token limit")
                    journal.append(image.id, kind, build_sample(image, kind, turns, prompt_sets[kind], seed))
                    tally.generated += 1
                except ReplyRejected as rejected:
                    tally.rejected += 1
                    logger.warning("image %s, %s: reply rejected: %s", image.id, kind, rejected)
            else:
                tally.failed += 1
                logger.warning("image %s, %s: teacher error after %d retries: %s", image.id, kind, reply.retries,
                               reply.error)
            bar.update(1, **{name: sum(getattr(c, name) for c in counts.values())
                             for name in ("generated", "rejected", "failed")})
    finally:
        journal.close()
        bar.close()
    samples = [journal.done[(image.id, kind)] for image in images for kind in kinds
               if (image.id, kind) in journal.done]
    summary = DatagenSummary(counts, journal.path, samples=len(samples))
    if samples:
        write_json_atomic(output, samples)
        summary.output = output
    return summary


__all__ = ["DatagenSummary", "JOURNAL_SUFFIX", "TypeCounts", "build_sample", "dry_run", "generate", "journal_path",
           "read_images", "render_prompts"]
