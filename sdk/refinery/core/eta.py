"""When a pipeline will end: each stage's seconds left, summed along its slowest path of stages.

A running stage's estimate is its trainer's (trainer/refinery_trainer/eta.py: the pace since its
first step times what is left). A stage not started yet has no pace of its own, so it borrows
one measured in the same pipeline, scaled by how much work a step is:

- a training stage (pretrain, sft, reward, dpo, rlhf): `maxSteps` x the tokens of one step
  (`batchSize` x `gradientAccumulationSteps` x `seqLen`, twice for reward and dpo, whose examples
  are pairs) x the measured seconds per token of a stage of the same type if one has run, else of
  the latest stage that has — plus the overhead every attempt pays once (process start, model and
  data loading, final save), measured on the stages that finished;
- an eval stage: that overhead once per model it scores; the export step: the overhead once.

So the estimate is good for the running stage and rough for the ones after it (an rlhf step
that generates costs more than a training step of the same tokens, until an rlhf stage has run);
README "Status" gives its accuracy on the example. Stages run in parallel where their inputs
allow, so the pipeline's estimate is the longest chain of remaining stages, not their sum.
None until some stage has measured a pace, and for a pipeline that is not running.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from ..api.v1alpha1 import Phase, Stage, StageStatus, StageType
from .accounting import parse_time

PAIRED = (StageType.reward, StageType.dpo)  # a chosen and a rejected sequence per example


def tokens_per_step(stage: Stage) -> float:
    t = stage.training
    return t.batch_size * t.gradient_accumulation_steps * t.seq_len * (2 if stage.type in PAIRED else 1)


def overhead_seconds(stages: list[Stage], by_name: Mapping[str, StageStatus]) -> float:
    """Mean seconds a finished stage spent outside its measured steps (start, loads, final save)."""
    spent = []
    for stage in stages:
        s = by_name[stage.name]
        start, end = parse_time(s.start_time), parse_time(s.completion_time)
        if s.phase == Phase.succeeded and start and end:
            stepping = (s.seconds_per_step or 0.0) * (s.max_steps or 0)
            spent.append(max(0.0, (end - start).total_seconds() - stepping))
    return sum(spent) / len(spent) if spent else 0.0


def seconds_per_token(stage: Stage, stages: list[Stage], by_name: Mapping[str, StageStatus]) -> float | None:
    """The measured pace a stage borrows: its own type's latest, else any stage's latest."""
    measured = [s for s in stages if by_name[s.name].seconds_per_step and s.type != StageType.eval]
    for candidates in ([s for s in measured if s.type == stage.type], measured):
        if candidates:
            ref = max(candidates, key=lambda s: by_name[s.name].start_time or "")
            return by_name[ref.name].seconds_per_step / tokens_per_step(ref)
    return None


def stage_seconds_left(stage: Stage, status: StageStatus, stages: list[Stage], by_name: Mapping[str, StageStatus],
                       overhead: float, now: datetime) -> float | None:
    if status.phase == Phase.succeeded:
        return 0.0
    if status.phase == Phase.running and status.estimated_remaining_seconds is not None:
        return status.estimated_remaining_seconds
    if stage.type == StageType.eval:
        whole = overhead * max(1, len(stage.eval_.models) if stage.eval_ else 1)
    elif stage.type == StageType.export:
        whole = overhead
    else:
        pace = seconds_per_token(stage, stages, by_name)
        steps = stage.training.max_steps
        if pace is None or steps is None:  # no pace measured yet, or a stage sized by epochs
            return None
        whole = overhead + steps * tokens_per_step(stage) * pace
    started = parse_time(status.start_time) if status.phase == Phase.running else None
    return max(0.0, whole - (now - started).total_seconds()) if started else whole


def pipeline_seconds_left(stages: list[Stage], by_name: Mapping[str, StageStatus], now: datetime) -> float | None:
    """The longest chain of remaining stages (None while any stage on it has no estimate)."""
    if not any(by_name[s.name].seconds_per_step for s in stages):
        return None
    overhead = overhead_seconds(stages, by_name)
    named = {s.name: s for s in stages}
    finish: dict[str, float | None] = {}

    def finished_in(name: str) -> float | None:  # the stages form a DAG (api/graph.py checks)
        if name not in finish:
            stage = named[name]
            left = stage_seconds_left(stage, by_name[name], stages, by_name, overhead, now)
            before = [finished_in(d) for d in stage.dependencies if d in named]
            finish[name] = None if left is None or None in before else left + max(before, default=0.0)
        return finish[name]

    ends = [finished_in(s.name) for s in stages]
    return None if None in ends else round(max(ends, default=0.0))


def words(seconds: float | None) -> str | None:
    """`kubectl get`'s ETA column: 45s, 12m, 3h20m."""
    if seconds is None:
        return None
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s < 600 else f"{s // 60}m"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
