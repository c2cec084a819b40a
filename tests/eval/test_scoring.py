"""Scoring without a model: the judge's score line, the ScienceQA answer parser, the VQA answer normalisation."""

import pytest

from hf_llava.eval.judge import parse_scores, relative_scores
from hf_llava.eval.multiple_choice import check_mc_questions, mc_prompt, parse_choice, score_multiple_choice
from hf_llava.eval.vqa import normalize_answer, vqa_prompt, vqa_score


@pytest.mark.parametrize("review, scores", [
    ("8 6\nAssistant 1 is more detailed.", (8.0, 6.0)),
    ("9, 7.5\n", (9.0, 7.5)),
    ("\n  10 1  \nreasons", (10.0, 1.0)),  # the first non-blank line
])
def test_the_judge_score_line_parses(review, scores):
    assert parse_scores(review) == scores


@pytest.mark.parametrize("review", ["Assistant 1: 8, Assistant 2: 6", "8\n6", "8 6 7", "eight six", "0 5", "8 11", "",
                                    "8/10 6/10", "-1 -1"])
def test_anything_else_on_the_score_line_is_unparseable(review):
    with pytest.raises(ValueError):
        parse_scores(review)


def test_relative_scores_leave_empty_categories_empty_never_zero():
    reviews = {"1": {"reference": 8.0, "model": 4.0}, "2": {"reference": 6.0, "model": 6.0}}
    table = relative_scores(reviews, {"1": "conv", "2": "conv", "3": "detail"})
    assert table["conv"] == {"relative": pytest.approx(100 * 5 / 7), "reference": 7.0, "model": 5.0, "n": 2}
    assert table["detail"] == table["complex"] == {"relative": None, "reference": None, "model": None, "n": 0}
    assert table["all"] == table["conv"]  # the mean of the means' ratio, not the mean of per-review ratios


@pytest.mark.parametrize("reply, letter", [
    ("B", "B"),  # a bare letter
    ("  C \n", "C"),
    ("A. a magnet", "A"),  # "A. ..."
    ("The answer is B.", "B"),
    ("I think so. The answer is C", "C"),
    ("Because of gravity.\nThe answer is A.", "A"),  # a newline reads as ". "
    ("b", None),  # lowercase is no answer, as in LLaVA's script
    ("the answer is b.", None),
    ("A magnet", None),  # no ". " after the letter
    ("Magnets attract iron.", None),
    ("", None),
])
def test_the_multiple_choice_parser_reads_the_original_answer_shapes(reply, letter):
    assert parse_choice(reply) == letter


def test_accuracy_counts_parsed_letters_and_lists_unparseable_replies():
    questions = check_mc_questions([
        {"question_id": "q1", "question": "Which is a metal?", "choices": ["iron", "wood", "glass"], "answer": 0,
         "image": "a.png", "category": "NAT"},
        {"question_id": "q2", "question": "Which is soft?", "choices": ["rock", "wool"], "answer": 1,
         "category": "NAT"},
        {"question_id": "q3", "question": "Which is a verb?", "choices": ["run", "blue", "cat"], "answer": 0,
         "image": "b.png", "category": "LAN"},
        {"question_id": "q4", "question": "Which is a noun?", "choices": ["go", "dog"], "answer": 1,
         "category": "LAN"},
        {"question_id": "q5", "question": "Which is red?", "choices": ["sky", "grass", "blood"], "answer": 2},
    ])
    predictions = {"q1": "A", "q2": "The answer is B.", "q3": "a", "q4": "C", "q5": "B. grass"}
    report = score_multiple_choice(questions, predictions)
    # right: q1 (A), q2 (B); wrong: q3 unparseable, q4 letter past the two choices, q5 wrong choice
    assert report["accuracy"] == pytest.approx(40.0) and report["n"] == 5
    assert report["image"] == {"accuracy": pytest.approx(50.0), "n": 2}  # q1 right, q3 wrong
    assert report["categories"] == {"LAN": {"accuracy": 0.0, "n": 2}, "NAT": {"accuracy": 100.0, "n": 2}}
    assert report["unparsed"] == ["q3"]  # C for a two-choice question parses, and is wrong
    assert [r["parsed"] for r in report["results"]] == ["A", "B", None, "C", "B"]


def test_the_multiple_choice_prompt_lists_letters_and_asks_for_one():
    prompt = mc_prompt("Which is a metal?", ["iron", "wood"], hint="Look at the objects.")
    assert prompt == ("Context: Look at the objects.\nWhich is a metal?\nA. iron\nB. wood\n"
                      "Answer with the option's letter from the given choices directly.")


@pytest.mark.parametrize("raw, normalised", [
    ("Yes", "yes"),
    ("Two dogs.", "2 dogs"),  # number words, the final period
    ("The cat", "cat"),  # articles
    ("a red-ish ball", "red ish ball"),  # a hyphen between words becomes a space
    ("dont", "don't"),  # contractions get their apostrophe
    ("isnt it?", "isn't it"),
    ("U.S.A.", "usa"),
    ("3.5", "3.5"),  # a period in a number stays
    ("1,000", "1000"),
    ("none", "0"),
    ("  Left\tside\n", "left side"),
    ("hello , world", "hello world"),  # punctuation next to a space is dropped
])
def test_vqa_normalisation(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_vqa_accuracy_is_min_matches_over_three_and_exact_with_one_answer():
    humans = ["2", "two", "2", "3", "Two."]  # four normalise to "2"
    assert vqa_score("two", humans) == 1.0
    assert vqa_score("3", humans) == pytest.approx(1 / 3)
    assert vqa_score("3", ["3", "3", "4"]) == pytest.approx(2 / 3)
    assert vqa_score("4", humans) == 0.0
    assert vqa_score("The Cat.", ["cat"]) == 1.0 and vqa_score("cats", ["cat"]) == 0.0


def test_the_vqa_prompt_adds_the_short_answer_instruction_once():
    assert vqa_prompt("What colour is it?") == "What colour is it?\nAnswer the question using a single word or phrase."
    assert vqa_prompt(vqa_prompt("What colour is it?")) == vqa_prompt("What colour is it?")
