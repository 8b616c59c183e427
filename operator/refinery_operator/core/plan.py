"""The one decision function: given a pipeline and what is observed of its stages, what should
the status say and which stage attempts should start now?

`plan()` is pure and level-based: it reads the spec, the previous status and the observed
attempts (Jobs in a cluster, processes in local mode) and progress records, and returns the
complete desired status plus the attempts to launch. The operator and the local runner both
call it, so a pipeline behaves the same on a laptop and on a cluster.

Decisions written down here:
- A stage starts when every stage it depends on has succeeded (independent stages run in
  parallel). Once any stage has failed for good, no new stage starts (fail fast, like Argo's
  DAG default); stages already running finish.
- A failed attempt is retried while its failure class has budget left (`retries.application`
  for the trainer's own failures, `retries.infrastructure` for the platform's). The retry is a
  new attempt number; the trainer resumes it from the newest complete checkpoint.
- The status is rebuilt from observations on every call; the previous status is only consulted
  for first-seen timestamps and for what a pod reported but no longer shows (so a reconcile
  that observes nothing new produces an identical status, and nothing is patched).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from ..api.run import ProgressRecord
from ..api.v1alpha1 import (
    Failure,
    Phase,
    PipelineStatus,
    Stage,
    StageInputs,
    StageStatus,
    TrainingPipeline,
)
from . import conditions as cond
from .naming import job_name, model_dir

AttemptPhase = Literal["Pending", "Running", "Succeeded", "Failed"]


@dataclass(frozen=True)
class AttemptState:
    """What the backend observes of one attempt of a stage (a Job, or a local process)."""

    attempt: int
    phase: AttemptPhase
    reason: str | None = None  # CamelCase, e.g. "TrainerError", "Evicted"
    message: str | None = None
    infrastructure: bool = False  # the platform, not the trainer, ended it
    start_time: str | None = None
    completion_time: str | None = None


@dataclass(frozen=True)
class Observed:
    attempts: Mapping[str, Sequence[AttemptState]] = field(default_factory=dict)  # every attempt, per stage
    records: Mapping[str, ProgressRecord] = field(default_factory=dict)  # latest record, per stage

    def latest(self, stage: str) -> AttemptState | None:
        attempts = self.attempts.get(stage) or ()
        return max(attempts, key=lambda a: a.attempt, default=None)


@dataclass(frozen=True)
class Launch:
    stage: str
    attempt: int
    inputs: StageInputs | None  # None: the stage starts from its own `model`


@dataclass(frozen=True)
class Plan:
    status: PipelineStatus
    launches: tuple[Launch, ...]


def plan(pipeline: TrainingPipeline, observed: Observed, pipeline_root: str, now: datetime) -> Plan:
    """Desired status and the attempts to start, from spec + observations."""
    stamp = rfc3339(now)
    spec = pipeline.spec
    previous = pipeline.status or PipelineStatus()
    by_name: dict[str, StageStatus] = {}
    launches: list[Launch] = []

    for stage in spec.stages:  # spec order; dependencies are looked up in by_name or previous
        prev = previous.stage(stage.name) or StageStatus(name=stage.name)
        by_name[stage.name] = observe_stage(stage, prev, observed, pipeline.metadata.name, stamp)

    failed_for_good = any(s.phase == Phase.failed for s in by_name.values())
    for stage in spec.stages:
        status = by_name[stage.name]
        if not all(by_name[d].phase == Phase.succeeded for d in stage.dependencies):
            continue
        # Recomputed on every call, not remembered from the launch: the inputs are a function of
        # the upstream outputs, so a status that lost them (or never had them) gets them back.
        inputs = resolve_inputs(stage, by_name, pipeline_root)
        status = by_name[stage.name] = status.model_copy(update={"inputs": inputs})
        attempt = next_attempt(stage, status, observed.latest(stage.name))
        if attempt is not None and not failed_for_good:
            launches.append(Launch(stage.name, attempt, inputs))
            by_name[stage.name] = status.model_copy(update=dict(
                phase=Phase.running, attempt=attempt, restarts=attempt - 1,
                job_name=job_name(pipeline.metadata.name, stage.name, attempt),
                start_time=status.start_time or stamp, completion_time=None,
            ))

    stages = [by_name[s.name] for s in spec.stages]
    status = summarize(stages, previous, pipeline.metadata.generation, stamp)
    return Plan(status=status, launches=tuple(launches))


def observe_stage(stage: Stage, prev: StageStatus, observed: Observed, pipeline: str, stamp: str) -> StageStatus:
    """Fold the latest attempt and progress record of one stage into its status."""
    latest = observed.latest(stage.name)
    record = observed.records.get(stage.name)
    status = prev.model_copy(deep=True)
    if latest is not None:
        status.attempt = max(status.attempt, latest.attempt)
        status.restarts = status.attempt - 1  # every attempt after the first is a retry
    if record is not None:
        fold_record(status, record)
    if latest is None:
        return status
    failures = [a for a in observed.attempts.get(stage.name) or () if a.phase == "Failed"]
    if failures:
        status.last_failure = failure_of(max(failures, key=lambda a: a.attempt), record)
    status.job_name = job_name(pipeline, stage.name, latest.attempt)
    status.start_time = status.start_time or latest.start_time or stamp
    if latest.phase in ("Pending", "Running"):
        status.phase = Phase.running
        status.completion_time = None
    elif latest.phase == "Succeeded":
        status.phase = Phase.succeeded
        status.progress = 1.0
        status.completion_time = status.completion_time or latest.completion_time or stamp
        status.output = status.output or (record.output if record else None)
        # lastFailure stays: a stage that succeeded on its second attempt still says why it needed one.
    else:
        if retry_budget_left(stage, observed.attempts.get(stage.name) or ()):
            status.phase = Phase.running  # a retry is launched below
        else:
            status.phase = Phase.failed
            status.completion_time = status.completion_time or latest.completion_time or stamp
            status.message = f"attempt {latest.attempt} failed: {status.last_failure.message}"
    return status


def fold_record(status: StageStatus, record: ProgressRecord) -> None:
    """Copy what the stage pod reported into its status (checkpoints count across attempts)."""
    status.step = record.step
    status.max_steps = record.max_steps
    status.progress = record.progress
    status.checkpoints = max(status.checkpoints, record.checkpoints)
    if record.last_checkpoint is not None:
        status.last_checkpoint = record.last_checkpoint
    if record.attempt == status.attempt:
        status.resumed_from = record.resumed_from
    if record.phase == "Succeeded":
        status.metrics = dict(record.metrics)  # the stage's final figures (result.json), nothing else
    elif record.metrics:
        status.metrics = {**status.metrics, **record.metrics}
    if record.output:
        status.output = record.output


def failure_of(attempt: AttemptState, record: ProgressRecord | None) -> Failure:
    """The trainer's own words win over the Job's generic reason when it reported a failure."""
    reported = record is not None and record.attempt == attempt.attempt and record.phase == "Failed"
    if not attempt.infrastructure and reported and record.message:
        return Failure(class_="Application", reason=record.failure_reason or "TrainerError", message=record.message)
    return Failure(
        class_="Infrastructure" if attempt.infrastructure else "Application",
        reason=attempt.reason or ("PodFailed" if attempt.infrastructure else "TrainerError"),
        message=attempt.message or "the stage's pod failed without a message",
    )


def retry_budget_left(stage: Stage, attempts: Sequence[AttemptState]) -> bool:
    failed = [a for a in attempts if a.phase == "Failed"]
    infra = sum(1 for a in failed if a.infrastructure)
    app = len(failed) - infra
    latest = max(attempts, key=lambda a: a.attempt)
    if latest.infrastructure:
        return infra <= stage.retries.infrastructure
    return app <= stage.retries.application


def next_attempt(stage: Stage, status: StageStatus, latest: AttemptState | None) -> int | None:
    """The attempt to launch now, or None when the stage needs no new attempt."""
    if latest is None:
        # Never observed: start attempt 1 (or re-create the attempt the status names, which is
        # idempotent because the Job name is deterministic).
        return None if status.phase in (Phase.succeeded, Phase.failed) else max(status.attempt, 1)
    if latest.phase == "Failed" and status.phase == Phase.running:
        return latest.attempt + 1
    return None


def resolve_inputs(stage: Stage, stages: Mapping[str, StageStatus], pipeline_root: str) -> StageInputs | None:
    """Hand each stage its upstream stages' final models, by the path the upstream reported."""
    def output_of(name: str | None) -> str | None:
        if name is None:
            return None
        return stages[name].output or model_dir(pipeline_root, name)

    inputs = StageInputs(model=output_of(stage.from_), reward_model=output_of(stage.reward_model))
    return inputs if inputs.model or inputs.reward_model else None


def summarize(stages: list[StageStatus], previous: PipelineStatus, generation: int | None, stamp: str) -> PipelineStatus:
    phases = [s.phase for s in stages]
    if Phase.failed in phases:
        phase = Phase.failed
    elif all(p == Phase.succeeded for p in phases):
        phase = Phase.succeeded
    elif Phase.running in phases:
        phase = Phase.running
    else:
        phase = Phase.pending
    current = next((s for s in stages if s.phase == Phase.running), None)
    status = PipelineStatus(
        phase=phase,
        observed_generation=generation,
        current_stage=current.name if current else None,
        progress=f"{phases.count(Phase.succeeded)}/{len(stages)}",
        checkpoint_step=current.last_checkpoint.step if current and current.last_checkpoint else None,
        checkpoint_time=current.last_checkpoint.time if current and current.last_checkpoint else None,
        conditions=[c.model_copy() for c in previous.conditions],
        stages=stages,
    )
    set_pipeline_conditions(status, stages, generation, stamp)
    return status


def set_pipeline_conditions(status: PipelineStatus, stages: list[StageStatus], generation: int | None, stamp: str) -> None:
    failed = next((s for s in stages if s.phase == Phase.failed), None)
    done = status.phase == Phase.succeeded
    running = [s.name for s in stages if s.phase == Phase.running]
    if failed is not None:
        reason, message = cond.REASON_STAGE_FAILED, f"stage {failed.name!r} failed: {failed.last_failure.message if failed.last_failure else ''}"
    elif done:
        reason, message = cond.REASON_SUCCEEDED, f"all {len(stages)} stages succeeded"
    elif running:
        reason, message = cond.REASON_STAGES_RUNNING, "running: " + ", ".join(running)
    else:
        reason, message = cond.REASON_PENDING, "waiting for stages to start"
    conds = status.conditions
    cond.set_condition(conds, cond.READY, done, reason, message, stamp, generation)
    cond.set_condition(conds, cond.PROGRESSING, bool(running) and failed is None, reason, message, stamp, generation)
    cond.set_condition(conds, cond.FAILED, failed is not None, reason, message, stamp, generation)


def invalid_spec_status(previous: PipelineStatus | None, message: str, generation: int | None, now: datetime) -> PipelineStatus:
    """The status of a pipeline whose spec cannot be run: Failed, reason InvalidSpec."""
    stamp = rfc3339(now)
    status = (previous or PipelineStatus()).model_copy(deep=True)
    status.phase = Phase.failed
    status.observed_generation = generation
    status.current_stage = None
    for type_, value in ((cond.READY, False), (cond.PROGRESSING, False), (cond.FAILED, True)):
        cond.set_condition(status.conditions, type_, value, cond.REASON_INVALID_SPEC, message, stamp, generation)
    return status


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
