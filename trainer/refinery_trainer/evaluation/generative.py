"""Held-out generation scores: each model answers prompts that have reference answers.

    exact_match(" moo", "moo")            # 1.0: equal after normalising case and whitespace
    contains("it says moo!", " moo")      # 1.0: the reference appears in the answer
    win_rate([2.0, 1.0], [1.0, 1.0])      # 0.75: wins count 1, ties half
    pass_at_k(n=4, c=1, k=4)              # 1.0: one of the 4 answers to a prompt is right

Normalising is deliberately small (case, surrounding and repeated whitespace, trailing
punctuation): a score a reader can check by eye against the answers in `answers.jsonl`.
"""

from __future__ import annotations

import math
import re
import string

_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    return _SPACE.sub(" ", text).strip().strip(string.punctuation + " ").lower()


def exact_match(answer: str, reference: str) -> float:
    return float(normalise(answer) == normalise(reference))


def contains(answer: str, reference: str) -> float:
    ref = normalise(reference)
    return float(bool(ref) and ref in normalise(answer))


def win_rate(rewards: list[float], baseline: list[float]) -> float:
    """Share of prompts where `rewards` beats `baseline` (the same prompts, in order); ties count half."""
    if not rewards:
        return 0.0
    wins = sum(1.0 if r > b else 0.5 if r == b else 0.0 for r, b in zip(rewards, baseline, strict=True))
    return wins / len(rewards)


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chen et al. 2021's unbiased estimator of pass@k from n answers of which c are correct:
    1 - C(n-c, k) / C(n, k), the chance that k answers drawn from the n include a correct one.
    With n = k (what the eval stage samples) it is 1.0 when any answer is correct, else 0.0."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def by_prompt(values: list, k: int) -> list[list]:
    """Answers of n prompts x k samples, prompt-major (`[p0s0, p0s1, p1s0, ...]`), as one list per prompt."""
    return [values[i : i + k] for i in range(0, len(values), k)]
