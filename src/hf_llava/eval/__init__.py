"""Evaluation as the paper does it: LLaVA-Bench (a text-only judge), multiple choice (ScienceQA), VQA accuracy.

`run_llava_bench`, `run_vqa` and `run_multiple_choice` are `hf-llava eval`'s file-based runs (answers and
reviews journaled beside the report, so reruns resume); `evaluate_vqa` and `evaluate_multiple_choice` score
an already loaded model in-process; `answer_questions` is the batched greedy answering they all share.
Names load on first use: importing this package imports neither torch, transformers nor openai.
"""

from .._lazy import lazy_names

__getattr__, __dir__ = lazy_names(__name__, {
    "CATEGORIES": ".inputs",
    "JUDGE_SYSTEM": ".judge",
    "JUDGE_TASK": ".judge",
    "answer_questions": ".answering",
    "evaluate_multiple_choice": ".multiple_choice",
    "evaluate_vqa": ".vqa",
    "judge_messages": ".judge",
    "load_model": ".answering",
    "normalize_answer": ".vqa",
    "parse_choice": ".multiple_choice",
    "parse_scores": ".judge",
    "relative_scores": ".judge",
    "run_llava_bench": ".llava_bench",
    "run_multiple_choice": ".multiple_choice",
    "run_vqa": ".vqa",
    "vqa_score": ".vqa",
})

__all__ = [
    "CATEGORIES",
    "JUDGE_SYSTEM",
    "JUDGE_TASK",
    "answer_questions",
    "evaluate_multiple_choice",
    "evaluate_vqa",
    "judge_messages",
    "load_model",
    "normalize_answer",
    "parse_choice",
    "parse_scores",
    "relative_scores",
    "run_llava_bench",
    "run_multiple_choice",
    "run_vqa",
    "vqa_score",
]
