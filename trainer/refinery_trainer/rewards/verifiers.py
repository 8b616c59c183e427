"""Built-in verifiers: a completion scored against the prompt's reference answer (or a format).

    exact_match([" 12"], [" 12 "])                 # [1.0]: equal after eval's normalisation
    contains([" it is 12!"], ["12"])               # [1.0]
    numeric(["The answer is 0.5"], ["1/2"])        # [1.0]: math-verify finds and compares the final answer
    matches(r"^ \\d+$")([" 12", "twelve"])         # [1.0, 0.0]
    length_penalty(4, 0.5)(["abcdef"])             # [-1.0]: 2 characters past 4

`exactMatch` and `contains` use the eval stage's normalisation (evaluation/generative.py), so a
reward of 1.0 is exactly what the eval stage counts as right. `numeric` uses Hugging Face's
`math-verify` (the verifier of open-r1 and lighteval): it extracts the last answer of a
completion (plain numbers, fractions, LaTeX, \\boxed{}) and checks equivalence with sympy; a
hand-written parser would miss what it handles.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..evaluation.generative import contains as _contains
from ..evaluation.generative import exact_match as _exact_match

Verifier = Callable[..., list[float]]


def exact_match(completions: list[str], references: list[str]) -> list[float]:
    return [_exact_match(c, str(r)) for c, r in zip(completions, references, strict=True)]


def contains(completions: list[str], references: list[str]) -> list[float]:
    return [_contains(c, str(r)) for c, r in zip(completions, references, strict=True)]


def numeric(completions: list[str], references: list[str]) -> list[float]:
    from math_verify import parse, verify

    scores = []
    for completion, reference in zip(completions, references, strict=True):
        gold, answer = parse(str(reference)), parse(completion)
        scores.append(float(bool(gold) and bool(answer) and verify(gold, answer)))
    return scores


def matches(pattern: str) -> Verifier:
    compiled = re.compile(pattern)

    def regex(completions: list[str], references=None) -> list[float]:
        return [float(compiled.search(c) is not None) for c in completions]

    return regex


def length_penalty(target: int, penalty: float) -> Verifier:
    def length(completions: list[str], references=None) -> list[float]:
        return [-penalty * max(0, len(c) - target) for c in completions]

    return length


REFERENCE_VERIFIERS = {"exactMatch": exact_match, "contains": contains, "numeric": numeric}
