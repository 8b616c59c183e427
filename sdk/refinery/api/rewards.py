"""What an rlhf stage optimises, and what audits it (refinery.dev/v1alpha1: `rl.rewards`, `rl.audit`).

A reward is a weighted sum of sources, each one of:

    - model: reward              # a reward stage's model (what `rewardModel: reward` means)
    - exactMatch: {}             # 1.0 when the completion equals the prompt's reference (eval's normalisation)
    - contains: {}               # 1.0 when the completion contains the reference
    - numeric: {}                # 1.0 when the final answer is mathematically equal to the reference (math-verify)
    - regex: {pattern: '^ \\d+$'}  # 1.0 when the completion matches the format
    - length: {target: 64, penalty: 0.01}   # -penalty per character past target
    - python: {path: rewards.py, function: score}   # the user's f(prompts, completions, references, **columns)

each with a `weight` (default 1) and a `name` (default: the stage's name, or the verifier's kind)
under which its mean is logged (`rewards/<name>`). Verifiers read the reference from the prompts
data's `data.referenceField` column (default `reference`).

`rl.audit` takes the same list: a reward the policy is *not* optimised against, evaluated on the
held-out prompts every `rl.auditSteps` steps (DESIGN.md, "Rewards").
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from .base import DNS_LABEL, STAGE_NAME_MAX, ApiModel
from .sources import checked_source

MAX_REWARDS = 8
VERIFIER_KINDS = ("exactMatch", "contains", "numeric", "regex", "length", "python")
SOURCE_KINDS = ("model", *VERIFIER_KINDS)
WATCH_NAME = "completion_watch"  # the zero-weight reward that records what completions look like (reserved)
REWARD_NAME = r"^[A-Za-z][A-Za-z0-9_-]*$"  # no dots: status metrics `<model>.<score>` are eval scores


class Verifier(ApiModel):
    """A built-in verifier against the reference column; it has no settings (`exactMatch: {}`)."""


class RegexReward(ApiModel):
    """1.0 when the completion matches `pattern` (Python `re.search`), else 0.0."""

    pattern: str = Field(..., min_length=1, max_length=1024, description="A Python regular expression.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as e:
            raise ValueError(f"not a valid regular expression: {e}") from None
        return value


class LengthReward(ApiModel):
    """A penalty for long completions: -penalty x (characters past `target`); 0 within it."""

    target: int = Field(..., ge=0, le=10_000_000, description="Characters allowed without a penalty.")
    penalty: float = Field(0.01, gt=0, le=1000, description="Penalty per character past `target`.")


class PythonReward(ApiModel):
    """The user's verifier: `function(prompts, completions, references, **columns) -> list[float]`."""

    path: str = Field(
        ..., min_length=1, max_length=1024,
        description="A .py file: relative to /workspace (local mode: the manifest's folder), or a source URI "
        "(`s3://`, `https://`, `hf://`) fetched once by the pipeline's initializer.",
    )
    function: str = Field(..., max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="The function's name.")
    timeout_seconds: float = Field(
        30.0, gt=0, le=3600, description="Longest one call may take; past it the stage fails as BadRewardFunction."
    )

    @field_validator("path")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        return checked_source(value)


class RewardSource(ApiModel):
    """One term of a reward: exactly one of `model` or a verifier, with its weight."""

    name: str | None = Field(
        None, max_length=63, pattern=REWARD_NAME,
        description="Name of its curve (`rewards/<name>`). Default: the reward stage's name, or the verifier's kind.",
    )
    weight: float = Field(1.0, ge=-1000, le=1000, description="Its weight in the sum.")
    model: str | None = Field(None, max_length=STAGE_NAME_MAX, pattern=DNS_LABEL, description="A reward stage.")
    exact_match: Verifier | None = Field(None, description="1.0 when the completion equals the reference.")
    contains: Verifier | None = Field(None, description="1.0 when the completion contains the reference.")
    numeric: Verifier | None = Field(
        None, description="1.0 when the completion's final answer equals the reference mathematically (math-verify)."
    )
    regex: RegexReward | None = Field(None, description="1.0 when the completion matches a pattern.")
    length: LengthReward | None = Field(None, description="A penalty past a target length.")
    python: PythonReward | None = Field(None, description="A Python function of the user's.")

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> RewardSource:
        kinds = self.kinds_set()
        if len(kinds) != 1:
            raise ValueError(f"a reward source sets exactly one of {', '.join(SOURCE_KINDS)}"
                             + (f" (this one sets {', '.join(kinds)})" if kinds else ""))
        return self

    def kinds_set(self) -> list[str]:
        values = (self.model, self.exact_match, self.contains, self.numeric, self.regex, self.length, self.python)
        return [k for k, v in zip(SOURCE_KINDS, values) if v is not None]

    @property
    def kind(self) -> str:
        return self.kinds_set()[0]

    @property
    def label(self) -> str:
        """The name its mean is logged under."""
        return self.name or self.model or self.kind

    @property
    def needs_reference(self) -> bool:
        return self.kind in ("exactMatch", "contains", "numeric")


RewardList = Annotated[list[RewardSource], Field(min_length=1, max_length=MAX_REWARDS)]


def reward_list_problems(field: str, sources: list[RewardSource]) -> list[str]:
    """Two sources logged under one name would hide one curve behind the other."""
    labels = [s.label for s in sources]
    reserved = [f"{field}: the name {WATCH_NAME!r} is Refinery's own (its completion watch): choose another"
                for label in labels if label == WATCH_NAME]
    return reserved + [f"{field}: two rewards are named {dup!r}: set `name` on one of them"
            for dup in sorted({x for x in labels if labels.count(x) > 1})]
