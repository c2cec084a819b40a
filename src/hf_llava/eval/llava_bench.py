"""LLaVA-Bench: the model answers, a text-only judge scores it against a reference, relative to the reference.

Inputs in the original layout: questions JSONL (`question_id`, `image`, `text`, `category` in conv / detail /
complex), reference answers JSONL (`question_id`, `text`), and a context JSONL keyed by `image` (captions +
boxes, or a `caption`). All of it, the images, the model folder, the report and both journals are checked
before the model loads or the judge is asked. The model's answers go to `REPORT.answers.jsonl`, the judge's
parsed reviews to `REPORT.reviews.jsonl`: a rerun reuses both (another judge reuses the answers).
"""

import time
from pathlib import Path
from typing import Optional

from .._io import digest, open_journal, write_json_atomic
from ..teachers import Teacher
from .answering import JournaledAnswers, check_model
from .files import DIGEST_CHARS, REVIEWS, beside, check_report
from .inputs import (CATEGORIES, check_categories, check_images, check_questions, read_contexts, read_questions,
                     read_references)
from .judge import JUDGE_SYSTEM, JUDGE_TASK, judge_messages, relative_scores, review_all
from .report import format_table


def run_llava_bench(model: str, questions: str, references: str, context: str, output: str, judge: Teacher, *,
                    images: Optional[str] = None, batch_size: int = 8, max_new_tokens: int = 1024,
                    device: Optional[str] = None, merge_adapter: bool = False, review_retries: int = 3,
                    overwrite: bool = False, progress: bool = True, quantization=None) -> dict:
    """Answer, judge and score LLaVA-Bench; write the report JSON (`output`) and return it.

    `judge` is a `hf_llava.teachers.Teacher` (an `OpenAITeacher` for the paper's protocol). `images`
    defaults to the questions file's folder. `review_retries`: how many times an unparseable review is asked again.
    """
    start = time.perf_counter()
    checked = check_questions(read_questions(questions), f"questions={questions}", image_required=True)
    check_categories(checked)
    reference_texts = read_references(references, checked)
    contexts = read_contexts(context, checked)
    images = images if images is not None else str(Path(questions).absolute().parent)
    check_images(checked, images)
    check_model(model, merge_adapter, device)
    if review_retries < 0:
        raise ValueError(f"review_retries={review_retries}: must be 0 or more.")
    report_path = check_report(output, overwrite)
    answers = JournaledAnswers(model, checked, report_path, max_new_tokens=max_new_tokens, overwrite=overwrite,
                               quantization=quantization)
    inputs = [[str(q["question_id"]), q["text"], q["image"], reference_texts[str(q["question_id"])],
               contexts[q["image"]]] for q in checked]
    run = {"judge": judge.name, "prompt": digest([JUDGE_SYSTEM, JUDGE_TASK], DIGEST_CHARS),
           "answers": digest(answers.run, DIGEST_CHARS), "inputs": digest(inputs, DIGEST_CHARS)}
    journal, fresh = open_journal(beside(report_path, REVIEWS), run, overwrite=overwrite, output=report_path)
    if answers.pending and hasattr(judge, "check_reachable"):
        judge.check_reachable()  # before the model answers: a wrong --base-url must not cost that time

    predictions = answers.generate(images_root=images, batch_size=batch_size, device=device,
                                   merge_adapter=merge_adapter, progress=progress)
    judged = time.perf_counter()
    requests = {str(q["question_id"]): judge_messages(contexts[q["image"]], q["text"],
                                                       reference_texts[str(q["question_id"])],
                                                       predictions[str(q["question_id"])]) for q in checked}
    resumed = sum(1 for key, _ in journal.done if key in requests)
    journal.start(run, fresh=fresh)
    try:
        reviews, failed, counts = review_all(judge, requests, journal, retries=review_retries, progress=progress)
    finally:
        journal.close()
    by_key = {str(q["question_id"]): q for q in checked}
    categories = {key: q["category"] for key, q in by_key.items()}
    report = {
        "benchmark": "llava-bench",
        "model": str(Path(model).absolute()),
        "questions": str(Path(questions).absolute()),
        "judge": {"model": judge.name, "base_url": getattr(judge, "base_url", None), **counts},
        "scores": relative_scores(reviews, categories),
        "failed": [{"question_id": by_key[key]["question_id"], "category": categories[key], **value}
                   for key, value in failed.items()],
        "answers": answers.summary,
        "reviews": {"file": str(journal.path), "reused": resumed},
        "timing": {"answers_seconds": answers.summary["seconds"],
                   "judge_seconds": round(time.perf_counter() - judged, 2),
                   "total_seconds": round(time.perf_counter() - start, 2)},
    }
    write_json_atomic(report_path, report)  # at once: a killed run never leaves half a report
    return report


def format_scores(report: dict) -> str:
    """The report's scores as a table: relative score, mean reference and model scores, reviews counted."""
    rows = [[name, s["relative"], s["reference"], s["model"], s["n"]]
            for name, s in report["scores"].items() if name in (*CATEGORIES, "all")]
    return format_table(["category", "relative %", "reference", "model", "n"], rows)


__all__ = ["format_scores", "run_llava_bench"]
