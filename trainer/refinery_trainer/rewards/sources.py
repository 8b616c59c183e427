"""Reward sources, built from the spec: one `Reward` per entry of `rl.rewards` (or `rl.audit`).

A model source keeps the reward model itself, so TRL scores it batched on the device exactly as
it always did (`trl_func`); verifiers and user functions are plain functions of the completions'
text and the prompts' other columns (the reference among them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from refinery.api.rewards import RewardSource

from ..errors import DataError
from . import verifiers
from .user import UserFunction

# What TRL adds to a reward function's keyword arguments besides the dataset's columns.
TRL_KWARGS = ("completion_ids", "trainer_state", "log_extra", "log_metric", "environments")
REFERENCE = "reference"  # the column name the verifiers read (data.referenceField is renamed to it)


@dataclass
class Reward:
    """One weighted reward source. `score` gives one float per completion."""

    name: str
    weight: float
    kind: str
    scorer: Callable[[list, list[str], dict[str, list]], list[float]]
    model: Any = None  # a reward stage's model (kind `model`), frozen
    tokenizer: Any = None
    needs_reference: bool = False

    def score(self, prompts: list, completions: list[str], columns: dict[str, list]) -> list[float]:
        if self.needs_reference and columns.get(REFERENCE) is None:
            raise DataError(f"reward {self.name!r} ({self.kind}) checks answers against a reference, but the prompts "
                            "have no reference column: set data.referenceField (default `reference`)")
        return self.scorer(prompts, completions, columns)

    def trl_func(self):
        """(reward function, processing class) for TRL's `reward_funcs` / `reward_processing_classes`."""
        if self.model is not None:
            return self.model, self.tokenizer

        def reward(prompts, completions, **kwargs) -> list[float]:
            columns = {k: v for k, v in kwargs.items() if k not in TRL_KWARGS}
            return self.score(prompts, [completion_text(c) for c in completions], columns)

        reward.__name__ = self.name  # TRL logs rewards/<name>/mean after it
        return reward, None


def build_rewards(ctx, sources: Sequence[RewardSource]) -> list[Reward]:
    """The `Reward` of each source; reward stages' models are loaded (frozen) from the run's `models`."""
    return [_build(ctx, s) for s in sources]


def _build(ctx, source: RewardSource) -> Reward:
    kind, name, weight = source.kind, source.label, source.weight
    if kind == "model":
        from ..scoring import score
        from ..stages.rlhf import load_reward_model_from

        path = ctx.model_path((ctx.run.models or {}).get(source.model) or (
            ctx.run.reward_model if source.model == ctx.stage.reward_model else None),
            f"model of reward stage {source.model!r}")
        model, tokenizer = load_reward_model_from(ctx, path)
        return Reward(name, weight, kind, lambda p, c, cols: score(model, tokenizer, p, c), model=model, tokenizer=tokenizer)
    if kind in verifiers.REFERENCE_VERIFIERS:
        check = verifiers.REFERENCE_VERIFIERS[kind]
        return Reward(name, weight, kind, lambda p, c, cols: check(c, cols[REFERENCE]), needs_reference=True)
    if kind == "regex":
        check = verifiers.matches(source.regex.pattern)
    elif kind == "length":
        check = verifiers.length_penalty(source.length.target, source.length.penalty)
    else:  # python
        spec = source.python
        fn = UserFunction.load(ctx.resolve(spec.path), spec.function, timeout_s=spec.timeout_seconds, stage=ctx.stage.name)

        def user(prompts, completions, columns):
            others = {k: v for k, v in columns.items() if k != REFERENCE}
            return fn(prompts, completions, columns.get(REFERENCE), others)

        return Reward(name, weight, kind, user)
    return Reward(name, weight, kind, lambda p, c, cols: check(c))


def score_all(rewards: Sequence[Reward], prompts: list, completions: list[str],
              columns: dict[str, list]) -> tuple[list[float], dict[str, float]]:
    """(weighted total per completion, mean of each reward by name)."""
    per = {r.name: r.score(prompts, completions, columns) for r in rewards}
    return weighted(rewards, per), {name: sum(v) / max(1, len(v)) for name, v in per.items()}


def weighted(rewards: Sequence[Reward], per: dict[str, list[float]]) -> list[float]:
    n = len(next(iter(per.values()))) if per else 0
    return [sum(r.weight * per[r.name][i] for r in rewards) for i in range(n)]


def completion_text(completion) -> str:
    """A completion as text: TRL gives a string, or a list of chat messages for conversational prompts."""
    if isinstance(completion, str):
        return completion
    return " ".join(m.get("content", "") for m in completion)
