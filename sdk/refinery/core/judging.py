"""The pipeline's `CircularJudge` warning: an eval stage whose judge is the reward model that a
model it scores was optimised against (pure).

An rlhf policy is trained to raise its reward model's score, including where that model is
wrong (issue 16: a policy that gamed its reward model still won 0.69 of comparisons judged by
it, while exact match fell from 0.77 to 0.04). So `meanReward` and `winRate` judged by that same
model say how well the policy learned to please it, not that it got better. The warning is known
from the spec alone, so it is set from the first reconcile — before any GPU time is spent — and
cleared when the spec no longer has it:

    eval.models: [rlhf], eval.generate.rewardModel: reward, and rlhf has rewardModel: reward
    -> CircularJudge True: "eval stage 'eval' judges rlhf with reward model 'reward', which ..."

A model trained `from` such a policy (an sft or dpo stage after rlhf) inherits what it learned,
so the walk follows `from` up the chain. Scores of a judge the policy was not optimised against
(a second reward stage, or a verifier of `eval.generate.rewards`) are not flagged.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..api.v1alpha1 import PipelineSpec, PipelineStatus, Stage, StageType, TrainingPipeline
from .conditions import set_condition

CIRCULAR_JUDGE = "CircularJudge"
REASON_CIRCULAR_JUDGE = "CircularJudge"
REASON_NO_CIRCULAR_JUDGE = "NoCircularJudge"
MARK = "*"  # beside a column of scores a circular judge produced (local mode's table, eval.json)


@dataclass(frozen=True)
class CircularJudgement:
    """One evaluated model scored by a reward model it (or a stage it comes from) was optimised against."""

    eval_stage: str
    judge: str  # the reward stage
    model: str  # the evaluated stage (in eval.models)
    optimised: str  # the rlhf stage optimised against `judge`: `model` itself or a stage it comes `from`
    columns: tuple[str, ...]  # its scores the judge produced: meanReward, winRate, a reward's name

    @property
    def metrics(self) -> list[str]:
        return [f"{self.model}.{c}" for c in self.columns]

    @property
    def footnote(self) -> str:
        """What a reader of the table needs beside a marked column."""
        return f"judged by the reward model {self.optimised} was optimised against ({self.judge})"

    @property
    def message(self) -> str:
        via = "" if self.model == self.optimised else f" (trained from {self.optimised!r})"
        return (f"eval stage {self.eval_stage!r} judges {self.model!r}{via} with reward model {self.judge!r}, which "
                f"stage {self.optimised!r} was optimised against: {' and '.join(self.metrics)} of that model are not "
                "evidence that it is better (a policy learns to please its reward model, right or wrong); compare on "
                "exactMatch or eval.generate.rewards verifiers, or judge with a reward stage it was not optimised against")


def optimised_against(stages: dict[str, Stage], name: str) -> dict[str, str]:
    """Reward stage -> the nearest rlhf stage optimised against it, on `name`'s `from` chain."""
    found: dict[str, str] = {}
    seen: set[str] = set()
    current = stages.get(name)
    while current is not None and current.name not in seen:  # `seen`: a cycle is the validator's to report
        seen.add(current.name)
        if current.type == StageType.rlhf:
            for source in current.rewards:
                if source.model:
                    found.setdefault(source.model, current.name)
        current = stages.get(current.from_) if current.from_ else None
    return found


def circular_judgements(spec: PipelineSpec) -> list[CircularJudgement]:
    """Every (eval stage, judge, evaluated model) where the judge was optimised against, in spec order."""
    stages = {s.name: s for s in spec.stages}
    out: list[CircularJudgement] = []
    for stage in spec.stages:
        gen = stage.eval_.generate if stage.eval_ is not None else None
        if gen is None:
            continue
        columns: dict[str, list[str]] = {}  # judge -> the scores it produces
        if gen.reward_model:
            columns[gen.reward_model] = ["meanReward", *(["winRate"] if gen.baseline else [])]
        for source in gen.rewards or []:
            if source.model:
                columns.setdefault(source.model, []).append(source.label)
        for model in stage.eval_.models:
            against = optimised_against(stages, model)
            out += [CircularJudgement(stage.name, judge, model, against[judge], tuple(dict.fromkeys(cols)))
                    for judge, cols in columns.items() if judge in against]
    return out


def circular_footnotes(spec: PipelineSpec, eval_stage: str) -> dict[str, str]:
    """`<model>.<score>` -> why it is not evidence, for one eval stage's scores."""
    return {metric: j.footnote for j in circular_judgements(spec) if j.eval_stage == eval_stage for metric in j.metrics}


def set_circular_judge_condition(pipeline: TrainingPipeline, status: PipelineStatus, stamp: str) -> None:
    """Set `CircularJudge` in place from the spec; cleared (False) once a spec that had it no longer does."""
    found = circular_judgements(pipeline.spec)
    generation = pipeline.metadata.generation
    if found:
        set_condition(status.conditions, CIRCULAR_JUDGE, True, REASON_CIRCULAR_JUDGE,
                      "; ".join(j.message for j in found), stamp, generation)
    elif any(c.type == CIRCULAR_JUDGE for c in status.conditions):
        set_condition(status.conditions, CIRCULAR_JUDGE, False, REASON_NO_CIRCULAR_JUDGE,
                      "no eval stage is judged by a reward model that a model it scores was optimised against",
                      stamp, generation)
