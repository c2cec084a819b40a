"""Reports: the accuracy tally the two exact-answer benchmarks share, and the tables printed after a run.

The report JSON itself is written by `files.write_report` (atomically); here live the numbers and their
printed form. Accuracies are percentages, as the paper reports them.
"""

import math
from typing import Iterable, Optional


def accuracy_table(scores: Iterable[tuple[Optional[str], float]]) -> dict:
    """`{"accuracy", "n", "categories": {name: {"accuracy", "n"}}}` from `(category, score in 0-1)` pairs."""
    total, count, groups = 0.0, 0, {}
    for category, score in scores:
        total, count = total + score, count + 1
        if category is not None:
            group = groups.setdefault(category, [0.0, 0])
            group[0] += score
            group[1] += 1
    return {"accuracy": 100.0 * total / count if count else None, "n": count,
            "categories": {name: {"accuracy": 100.0 * s / n, "n": n} for name, (s, n) in sorted(groups.items())}}


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion `successes / n` (both ends in 0-1; 95% for z=1.96).

    Unlike the normal approximation it stays inside [0, 1] and is honest at 0/n and n/n; `(0.0, 1.0)` for n=0.
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def percent_with_interval(accuracy: Optional[float], n: int, z: float = 1.96) -> dict:
    """`{"accuracy", "n", "interval": [low, high]}` in percent, from an accuracy in percent over `n` questions."""
    if accuracy is None or n <= 0:
        return {"accuracy": None, "n": n, "interval": None}
    low, high = wilson_interval(accuracy / 100 * n, n, z)
    return {"accuracy": round(accuracy, 2), "n": n, "interval": [round(100 * low, 2), round(100 * high, 2)]}


def format_interval(score: Optional[dict]) -> Optional[str]:
    """`"90.2 [87.3, 92.5]"` from a `percent_with_interval` dict (None stays None, printed as `-`)."""
    if score is None or score.get("accuracy") is None:
        return None
    if score.get("interval") is None:
        return f"{score['accuracy']:.1f}"
    low, high = score["interval"]
    return f"{score['accuracy']:.1f} [{low:.1f}, {high:.1f}]"


def format_table(header: list[str], rows: list[list]) -> str:
    """A plain text table: the first column left-aligned, numbers right-aligned with one or two decimals."""
    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.2f}"
        return str(value)

    cells = [header] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in cells)


def accuracy_rows(table: dict, extra: Optional[dict] = None) -> str:
    """The printed form of an `accuracy_table` (plus named extra rows such as the image subset)."""
    rows = [["all", table["accuracy"], table["n"]]]
    rows += [[name, value["accuracy"], value["n"]] for name, value in (extra or {}).items()]
    rows += [[f"  {name}", value["accuracy"], value["n"]] for name, value in table["categories"].items()]
    return format_table(["questions", "accuracy %", "n"], rows)


__all__ = ["accuracy_rows", "accuracy_table", "format_interval", "format_table", "percent_with_interval",
           "wilson_interval"]
