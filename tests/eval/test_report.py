"""The report's numbers: the Wilson interval every demo accuracy is printed with."""

import pytest

from hf_llava.eval.report import format_interval, percent_with_interval, wilson_interval


@pytest.mark.parametrize("successes, n, low, high", [
    (8, 10, 0.490, 0.943),
    (0, 10, 0.0, 0.278),
    (10, 10, 0.722, 1.0),
    (50, 100, 0.404, 0.596),
    (450, 500, 0.871, 0.923),
])
def test_the_wilson_interval_matches_known_values(successes, n, low, high):
    got = wilson_interval(successes, n)
    assert got == pytest.approx((low, high), abs=5e-4)


def test_the_interval_narrows_with_more_questions_and_holds_the_estimate():
    small, large = wilson_interval(80, 100), wilson_interval(800, 1000)
    assert small[0] < large[0] < 0.8 < large[1] < small[1]
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_a_percentage_prints_with_its_interval():
    score = percent_with_interval(80.0, 10)
    assert score == {"accuracy": 80.0, "n": 10, "interval": [49.02, 94.33]}
    assert format_interval(score) == "80.0 [49.0, 94.3]"
    assert format_interval(None) is None
