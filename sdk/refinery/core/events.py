"""Kubernetes Events of a pipeline, from the change between two statuses (pure).

One Event per transition — a stage started or was retried, saved a checkpoint, an attempt failed
(with its class), a stage succeeded or failed, a gate was not met, reward hacking or a circular
judge was found, the pipeline succeeded, was suspended or resumed — so nothing is posted by a
reconcile that changed nothing (not spammy), and an operator that restarts compares with the
status it wrote last (what the API server holds).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..api.v1alpha1 import Phase, PipelineStatus, StageStatus
from . import conditions as cond
from .hacking import REWARD_HACKING
from .judging import CIRCULAR_JUDGE

NORMAL, WARNING = "Normal", "Warning"


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


def pipeline_events(old: PipelineStatus | None, new: PipelineStatus) -> list[Event]:
    old = old or PipelineStatus()
    events: list[Event] = []
    for stage in new.stages:
        events += stage_events(old.stage(stage.name) or StageStatus(name=stage.name), stage)
    was = lambda type_, reason=None: _is_true(old, type_, reason)  # noqa: E731
    now = lambda type_, reason=None: _is_true(new, type_, reason)  # noqa: E731
    if now(cond.FAILED, cond.REASON_GATE_NOT_MET) and not was(cond.FAILED, cond.REASON_GATE_NOT_MET):
        events.append(Event(WARNING, cond.REASON_GATE_NOT_MET, cond.get_condition(new.conditions, cond.FAILED).message))
    if now(REWARD_HACKING) and not was(REWARD_HACKING):
        events.append(Event(WARNING, REWARD_HACKING, cond.get_condition(new.conditions, REWARD_HACKING).message))
    if now(CIRCULAR_JUDGE) and not was(CIRCULAR_JUDGE):
        events.append(Event(WARNING, CIRCULAR_JUDGE, cond.get_condition(new.conditions, CIRCULAR_JUDGE).message))
    if new.phase == Phase.succeeded and old.phase != Phase.succeeded:
        events.append(Event(NORMAL, cond.REASON_SUCCEEDED, f"all {len(new.stages)} stages succeeded"))
    if now(cond.SUSPENDED, cond.REASON_SUSPENDED) and not was(cond.SUSPENDED, cond.REASON_SUSPENDED):
        events.append(Event(NORMAL, cond.REASON_SUSPENDED, "every stage stopped; running ones saved a checkpoint"))
    if was(cond.SUSPENDED) and not now(cond.SUSPENDED):
        events.append(Event(NORMAL, cond.REASON_RESUMED, "spec.suspend is false: stages resume from their checkpoints"))
    return events


def stage_events(old: StageStatus, new: StageStatus) -> list[Event]:
    events = []
    name = new.name
    failure = new.last_failure
    if failure is not None and (old.last_failure is None or old.last_failure.attempt != failure.attempt):
        if failure.class_ == "Disruption":  # not the user's failure: said so in the reason kubectl shows
            events.append(Event(WARNING, "AttemptDisrupted",
                                f"stage {name!r} attempt {failure.attempt} was disrupted ({failure.reason}): {failure.message}"))
        else:
            events.append(Event(WARNING, "AttemptFailed",
                                f"stage {name!r} attempt {failure.attempt} failed ({failure.class_}, {failure.reason}): {failure.message}"))
    if new.attempt > old.attempt and new.phase == Phase.running:
        if new.attempt == new.first_attempt:
            run = f" (re-run {new.run})" if new.run else ""
            events.append(Event(NORMAL, "StageStarted", f"stage {name!r} started{run}: Job {new.job_name}"))
        else:
            events.append(Event(NORMAL, "StageRetried", f"stage {name!r} attempt {new.attempt} started, resuming from "
                                                        "its newest complete checkpoint: Job " + str(new.job_name)))
    step = new.last_checkpoint.step if new.last_checkpoint else None
    if step is not None and step != (old.last_checkpoint.step if old.last_checkpoint else None):
        events.append(Event(NORMAL, "CheckpointSaved", f"stage {name!r} saved a checkpoint at step {step}"))
    if new.phase != old.phase and new.phase == Phase.succeeded:
        events.append(Event(NORMAL, "StageSucceeded", f"stage {name!r} succeeded: {new.output or ''}".rstrip(": ")))
    if new.phase != old.phase and new.phase == Phase.failed:
        events.append(Event(WARNING, cond.REASON_STAGE_FAILED, new.message or f"stage {name!r} failed"))
    return events


def _is_true(status: PipelineStatus, type_: str, reason: str | None = None) -> bool:
    c = cond.get_condition(status.conditions, type_)
    return c is not None and c.status == "True" and (reason is None or c.reason == reason)
