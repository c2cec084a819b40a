"""Multiple-choice accuracy (ScienceQA style): options as letters, the answer parsed as LLaVA's script does.

Each question carries `choices` (a list) and `answer` (the right choice's index), and optionally `hint`
(shown as "Context: ..."), `image` and `category`. The prompt lists the choices as `A. ...`, `B. ...` and
ends with LLaVA-1.5's instruction to answer with the letter. The reply is read as LLaVA's
`eval_science_qa.py` reads it: a bare letter, a reply starting "A. ", or "The answer is A"; newlines count as
". ", and case matters (a lowercase "a" is no answer there either). A reply that gives no letter is wrong
and listed under `unparsed`; a letter past the last choice is wrong. Accuracy is reported overall, on the
questions with an image (the paper's IMG column) and per `category`.
"""

import re
import string
from typing import Optional, Sequence

from .inputs import check_questions

LETTERS = string.ascii_uppercase
INSTRUCTION = "Answer with the option's letter from the given choices directly."
_STARTS_WITH_LETTER = re.compile(r"^([A-Z])\. ")
_THE_ANSWER_IS = (re.compile(r"The answer is ([A-Z])\."), re.compile(r"The answer is ([A-Z])"))


def mc_prompt(question: str, choices: Sequence[str], hint: Optional[str] = None) -> str:
    """`Context: hint` (when given), the question, `A. choice` lines, then the instruction."""
    lines = [f"Context: {hint.strip()}"] if hint and hint.strip() else []
    lines += [question.strip(), *(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices)), INSTRUCTION]
    return "\n".join(lines)


def parse_choice(prediction: str) -> Optional[str]:
    """The option letter a reply gives, or None when it gives none (see the module docstring)."""
    text = prediction.strip().replace("\n", ". ")  # replies are stripped when written, as in LLaVA
    if text.strip() in LETTERS and len(text.strip()) == 1:
        return text.strip()
    found = _STARTS_WITH_LETTER.match(text)
    if found:
        return found.group(1)
    for pattern in _THE_ANSWER_IS:
        found = pattern.search(text)
        if found:
            return found.group(1)
    return None


def choice_index(letter: Optional[str], num_choices: int) -> int:
    """The chosen index, or -1 for no letter or a letter past the last choice (both wrong)."""
    if letter is None or LETTERS.index(letter) >= num_choices:
        return -1
    return LETTERS.index(letter)


def check_mc_questions(questions: Sequence[dict], where: str = "questions") -> list[dict]:
    """Questions with 2-26 non-empty `choices` and an `answer` index among them; adds each one's `prompt`."""
    checked = check_questions(questions, where)
    for q in checked:
        choices, answer = q.get("choices"), q.get("answer")
        if (not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS)
                or not all(isinstance(c, str) and c.strip() for c in choices)):
            raise ValueError(f"{q['_where']}: 'choices' must be a list of 2 to {len(LETTERS)} non-empty strings.")
        if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
            raise ValueError(f"{q['_where']}: 'answer' must be the right choice's index, 0 to {len(choices) - 1}; "
                             f"got {answer!r}.")
        hint = q.get("hint") if isinstance(q.get("hint"), str) else None
        q["prompt"] = mc_prompt(q["text"], choices, hint)
    return checked


def score_multiple_choice(questions: list[dict], predictions: dict[str, str]) -> dict:
    """Accuracy (percent) overall, with an image (`image`), per category; `unparsed` ids; each result."""
    from .report import accuracy_table

    results, unparsed = [], []
    for q in questions:
        prediction = predictions[str(q["question_id"])]
        letter = parse_choice(prediction)
        if letter is None:
            unparsed.append(q["question_id"])
        chosen = choice_index(letter, len(q["choices"]))
        results.append({"question_id": q["question_id"], "category": q["category"],
                        "has_image": q["image"] is not None, "prediction": prediction, "parsed": letter,
                        "answer": LETTERS[q["answer"]], "correct": chosen == q["answer"]})
    table = accuracy_table((r["category"], float(r["correct"])) for r in results)
    with_image = accuracy_table((None, float(r["correct"])) for r in results if r["has_image"])
    return {**table, "image": {"accuracy": with_image["accuracy"], "n": with_image["n"]}, "unparsed": unparsed,
            "results": results}


def evaluate_multiple_choice(model, processor, questions: Sequence[dict], images_root=None, *, batch_size: int = 8,
                             max_new_tokens: int = 16, progress: bool = True) -> dict:
    """Multiple-choice accuracy of an already loaded model (PyTorch or ONNX Runtime), in-process.

    `questions`: dicts with `question` (or `text`), `choices`, `answer` (index), optional `image`, `hint`,
    `category`, `question_id` (default: the position). Returns what `score_multiple_choice` returns.
    """
    from .runs import evaluate_loaded

    return evaluate_loaded(check_mc_questions, score_multiple_choice, model, processor, questions, images_root,
                           batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress,
                           desc="multiple choice")


def run_multiple_choice(model: str, questions: str, output: str, *, images: Optional[str] = None,
                        batch_size: int = 8, max_new_tokens: int = 128, device: Optional[str] = None,
                        merge_adapter: bool = False, overwrite: bool = False, progress: bool = True,
                        quantization=None) -> dict:
    """`hf-llava eval multiple-choice`: answer a questions JSONL, score it, write the report (answers beside it).
    `quantization`: a `BitsAndBytesConfig` (`hf_llava._loading.bitsandbytes_config`) to load the model with."""
    from .runs import run_scored

    return run_scored("multiple-choice", check_mc_questions, score_multiple_choice, model, questions, output,
                      images=images, batch_size=batch_size, max_new_tokens=max_new_tokens, device=device,
                      merge_adapter=merge_adapter, overwrite=overwrite, progress=progress, quantization=quantization)


__all__ = ["INSTRUCTION", "check_mc_questions", "choice_index", "evaluate_multiple_choice", "mc_prompt",
           "parse_choice", "run_multiple_choice", "score_multiple_choice"]
