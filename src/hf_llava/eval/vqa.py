"""VQA accuracy: short answers scored against human answers with the official VQA answer normalisation.

The prompt adds LLaVA-1.5's short-answer instruction to each question. Answers are normalised as the
official VQA evaluation does (lower case; punctuation removed or turned into spaces; periods dropped
unless in a number; number words to digits; articles dropped; missing apostrophes of contractions
restored). With several human answers a prediction scores min(#matching answers / 3, 1); with one, exact
match. Accuracy is reported overall and per `category` (or `type`) when questions carry one.
"""

import re
from typing import Optional, Sequence

from .inputs import check_questions

SHORT_ANSWER = "Answer the question using a single word or phrase."

# The official VQA evaluation's tables (vqaEval.py), kept as they are so that scores compare.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am",
    "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've",
    "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
               "!"]
_PERIOD = re.compile(r"\.(?!\d)")  # what the official `periodStrip` does: a period not followed by a digit
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")


def _punctuation(text: str) -> str:
    out = text
    for p in PUNCTUATION:
        # As the official script: dropped when it touches a space (or the text has "1,000"), else a space.
        if f"{p} " in text or f" {p}" in text or _COMMA_IN_NUMBER.search(text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def normalize_answer(answer: str) -> str:
    """The official VQA normalisation of one answer ("Two dogs." -> "2 dogs", "The cat" -> "cat")."""
    text = " ".join(str(answer).replace("\n", " ").replace("\t", " ").lower().split())
    words = [NUMBER_WORDS.get(w, w) for w in _punctuation(text).split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def vqa_score(prediction: str, answers: Sequence[str]) -> float:
    """min(#answers equal to the prediction / 3, 1) after normalisation; exact match with a single answer."""
    predicted = normalize_answer(prediction)
    matches = sum(normalize_answer(a) == predicted for a in answers)
    return float(matches > 0) if len(answers) == 1 else min(matches / 3.0, 1.0)


def vqa_prompt(question: str) -> str:
    """The question with LLaVA-1.5's short-answer instruction (once: LLaVA's own files already carry it)."""
    question = question.strip()
    return question if question.endswith(SHORT_ANSWER) else f"{question}\n{SHORT_ANSWER}"


def check_vqa_questions(questions: Sequence[dict], where: str = "questions") -> list[dict]:
    """Questions with an `image` and an `answers` list (human answers: strings, or VQA's {"answer": ...}) or
    one `answer`."""
    checked = check_questions(questions, where, image_required=True)
    for q in checked:
        answers = q.get("answers", [q["answer"]] if isinstance(q.get("answer"), str) else None)
        if isinstance(answers, list):
            answers = [a.get("answer") if isinstance(a, dict) else a for a in answers]
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise ValueError(f"{q['_where']}: 'answers' must be a non-empty list of the human answers (strings).")
        q["answers"], q["prompt"] = answers, vqa_prompt(q["text"])
    return checked


def score_vqa(questions: list[dict], predictions: dict[str, str]) -> dict:
    """Accuracy (percent) overall and per category, and each question's prediction and score."""
    from .report import accuracy_table

    results = []
    for q in questions:
        prediction = predictions[str(q["question_id"])]
        results.append({"question_id": q["question_id"], "category": q["category"], "prediction": prediction,
                        "score": vqa_score(prediction, q["answers"])})
    return {**accuracy_table((r["category"], r["score"]) for r in results), "results": results}


def evaluate_vqa(model, processor, questions: Sequence[dict], images_root=None, *, batch_size: int = 8,
                 max_new_tokens: int = 16, progress: bool = True) -> dict:
    """VQA accuracy of an already loaded model (PyTorch or ONNX Runtime), in-process.

    `questions`: dicts with `question` (or `text`), `answers` (or one `answer`), `image` (a file under
    `images_root`, a path, or a PIL image), optional `question_id` (default: the position) and
    `category` / `type`. Returns `{"accuracy", "n", "categories": {name: {"accuracy", "n"}}, "results"}`.
    """
    from .runs import evaluate_loaded

    return evaluate_loaded(check_vqa_questions, score_vqa, model, processor, questions, images_root,
                           batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress, desc="vqa")


def run_vqa(model: str, questions: str, output: str, *, images: Optional[str] = None, batch_size: int = 8,
            max_new_tokens: int = 128, device: Optional[str] = None, merge_adapter: bool = False,
            overwrite: bool = False, progress: bool = True, quantization=None) -> dict:
    """`hf-llava eval vqa`: answer a questions JSONL, score it, write the report (and the answers beside it).
    `quantization`: a `BitsAndBytesConfig` (`hf_llava._loading.bitsandbytes_config`) to load the model with."""
    from .runs import run_scored

    return run_scored("vqa", check_vqa_questions, score_vqa, model, questions, output, images=images,
                      batch_size=batch_size, max_new_tokens=max_new_tokens, device=device,
                      merge_adapter=merge_adapter, overwrite=overwrite, progress=progress, quantization=quantization)


__all__ = ["SHORT_ANSWER", "check_vqa_questions", "evaluate_vqa", "normalize_answer", "run_vqa", "score_vqa",
           "vqa_prompt", "vqa_score"]
