"""Held-out generation scores: each model answers prompts that have reference answers.

    exact_match(" moo", "moo")            # 1.0: equal after normalising case and whitespace
    contains("it says moo!", " moo")      # 1.0: the reference appears in the answer
    win_rate([2.0, 1.0], [1.0, 1.0])      # 0.75: wins count 1, ties half

Normalising is deliberately small (case, surrounding and repeated whitespace, trailing
punctuation): a score a reader can check by eye against the answers in `answers.jsonl`.
"""

from __future__ import annotations

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
