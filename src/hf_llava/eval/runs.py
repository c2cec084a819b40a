"""Runs of the exact-answer benchmarks (VQA, multiple choice): questions -> answers -> score (-> report).

`evaluate_loaded` works in-process on a model already loaded; `run_scored` is the file-based run: every input
is checked (questions, images, model folder, report, answers journal) before the model loads; the answers are
journaled beside the report as they come (`files`), the report is written at once.
"""

import os
import time
from pathlib import Path
from typing import Callable, Optional


def evaluate_loaded(check: Callable[[list, str], list], score: Callable[[list, dict], dict], model, processor,
                    questions, images_root=None, *, batch_size: int = 8, max_new_tokens: int = 16,
                    progress: bool = True, desc: str = "answering") -> dict:
    """Check `questions` (dicts; `question_id` defaults to the position), answer them with `model`, score them."""
    from .answering import answer_questions

    checked = check([{"question_id": i, **q} for i, q in enumerate(questions)], "questions")
    answers = answer_questions(model, processor, [{"text": q["prompt"], "image": q["image"]} for q in checked],
                               images_root, batch_size, max_new_tokens, progress=progress, desc=desc)
    return score(checked, {str(q["question_id"]): a for q, a in zip(checked, answers)})


def run_scored(benchmark: str, check: Callable[[list, str], list], score: Callable[[list, dict], dict],
               model: str, questions: str, output: str, *, images: Optional[str] = None, batch_size: int = 8,
               max_new_tokens: int = 128, device: Optional[str] = None, merge_adapter: bool = False,
               overwrite: bool = False, progress: bool = True, quantization=None) -> dict:
    """`check(records, where)` validates the questions and adds each one's `prompt`; `score(questions,
    predictions)` returns the benchmark's numbers with a `results` list. Returns the report written."""
    from .._io import write_json_atomic
    from .answering import JournaledAnswers, check_model
    from .files import check_report
    from .inputs import check_images, read_questions

    start = time.perf_counter()
    checked = check(read_questions(questions), f"questions={questions}")
    images = images if images is not None else os.path.dirname(os.path.abspath(questions))
    check_images(checked, images)
    check_model(model, merge_adapter, device)
    report_path = check_report(output, overwrite)
    answers = JournaledAnswers(model, [{**q, "text": q["prompt"]} for q in checked], report_path,
                               max_new_tokens=max_new_tokens, overwrite=overwrite, quantization=quantization)
    predictions = answers.generate(images_root=images, batch_size=batch_size, device=device,
                                   merge_adapter=merge_adapter, progress=progress)
    scores = score(checked, predictions)
    report = {"benchmark": benchmark, "model": str(Path(model).absolute()),
              "questions": str(Path(questions).absolute()),
              **{k: v for k, v in scores.items() if k != "results"}, "answers": answers.summary,
              "seconds": round(time.perf_counter() - start, 2), "results": scores["results"]}
    write_json_atomic(report_path, report)  # at once: a killed run never leaves half a report
    return report


__all__ = ["evaluate_loaded", "run_scored"]
