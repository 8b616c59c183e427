"""The pipeline-level status: its phase, the printer-column summary and its conditions, from
the stages' statuses (`summarize`), or for a spec that cannot run (`invalid_spec_status`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from ..api.v1alpha1 import Phase, PipelineStatus, StageStatus
from . import conditions as cond
from .conditions import rfc3339


def summarize(stages: list[StageStatus], gates: Mapping[str, str], suspend: bool, previous: PipelineStatus,
              generation: int | None, stamp: str, queued: Sequence[str] = (), queue_name: str | None = None
              ) -> PipelineStatus:
    """`queued`: running stages whose Job waits for Kueue (LocalQueue `queue_name`) to admit it."""
    phases = [s.phase for s in stages]
    if Phase.failed in phases or gates:
        phase = Phase.failed
    elif all(p == Phase.succeeded for p in phases):
        phase = Phase.succeeded
    elif suspend:
        phase = Phase.suspended
    elif Phase.running in phases:
        phase = Phase.running
    else:
        phase = Phase.pending
    current = next((s for s in stages if s.phase in (Phase.running, Phase.suspended)), None)
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
    set_pipeline_conditions(status, stages, gates, generation, stamp, queued, queue_name)
    return status


def set_pipeline_conditions(status: PipelineStatus, stages: list[StageStatus], gates: Mapping[str, str],
                            generation: int | None, stamp: str, queued: Sequence[str] = (),
                            queue_name: str | None = None) -> None:
    failed = next((s for s in stages if s.phase == Phase.failed), None)
    done = status.phase == Phase.succeeded
    suspended = status.phase == Phase.suspended
    running = [s.name for s in stages if s.phase == Phase.running]
    if failed is not None:
        reason, message = cond.REASON_STAGE_FAILED, f"stage {failed.name!r} failed: {failed.last_failure.message if failed.last_failure else ''}"
    elif gates:
        name = next(iter(gates))
        reason, message = cond.REASON_GATE_NOT_MET, f"stage {name!r}: {gates[name]}"
    elif done:
        reason, message = cond.REASON_SUCCEEDED, f"all {len(stages)} stages succeeded"
    elif suspended:
        reason = cond.REASON_SUSPENDING if running else cond.REASON_SUSPENDED
        message = f"suspending: {', '.join(running)} saving a checkpoint" if running else "suspended by spec.suspend"
    elif running and set(running) <= set(queued):
        reason, message = cond.REASON_QUEUED, f"queued: {', '.join(running)} waiting for Kueue (LocalQueue {queue_name!r})"
    elif running:
        reason, message = cond.REASON_STAGES_RUNNING, "running: " + ", ".join(running)
    else:
        reason, message = cond.REASON_PENDING, "waiting for stages to start"
    conds = status.conditions
    cond.set_condition(conds, cond.READY, done, reason, message, stamp, generation)
    cond.set_condition(conds, cond.PROGRESSING, bool(running) and failed is None and not gates and not suspended,
                       reason, message, stamp, generation)
    cond.set_condition(conds, cond.FAILED, failed is not None or bool(gates), reason, message, stamp, generation)
    if suspended:
        cond.set_condition(conds, cond.SUSPENDED, True, reason, message, stamp, generation)
    elif cond.get_condition(conds, cond.SUSPENDED) is not None:  # only once a pipeline was ever suspended
        cond.set_condition(conds, cond.SUSPENDED, False, cond.REASON_RESUMED, "spec.suspend is false", stamp, generation)


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
