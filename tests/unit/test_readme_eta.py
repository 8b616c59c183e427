"""The README's ETA accuracy line stays in the shape benchmarks/eta_accuracy.py prints: each cell
is predicted vs actual seconds and an error that is (predicted - actual) / actual, for every stage
of the example with steps and for the pipeline, at 25, 50 and 75 %. The figures come from running
the benchmark (minutes); rerun it and paste its table when the estimate's code changes."""

from __future__ import annotations

import re

from tests.tools import REPO

README = (REPO / "README.md").read_text()
CELL = r"([0-9.]+) vs ([0-9.]+) \(([+-][0-9]+)%\)"


def test_the_eta_accuracy_line_is_consistent():
    found = re.search(r"^\*\*ETA accuracy on tiny-chat[^*]*:\*\*(.*)$", README, re.M)
    assert found, "README: no ETA accuracy line"
    assert "python benchmarks/eta_accuracy.py" in README
    for name in ("pretrain", "sft", "reward", "rlhf", "pipeline"):
        part = re.search(rf"{name} {CELL}, {CELL}, {CELL}", found.group(1))
        assert part, name
        numbers = part.groups()
        for i in range(0, 9, 3):
            predicted, actual, error = float(numbers[i]), float(numbers[i + 1]), int(numbers[i + 2])
            # Means over runs: the mean error is not the error of the means, but it leans the same way.
            if abs(predicted - actual) >= 0.1 * actual:
                assert (error > 0) == (predicted > actual), (name, numbers[i:i + 3])
