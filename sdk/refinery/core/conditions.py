"""Pipeline conditions, the Kubernetes way: one constant per type and reason, and a setter
that keeps `lastTransitionTime` unless the status actually flips."""

from __future__ import annotations

from datetime import datetime

from ..api.v1alpha1 import Condition

READY = "Ready"
PROGRESSING = "Progressing"
FAILED = "Failed"
SUSPENDED = "Suspended"  # present once a pipeline was ever suspended

REASON_PENDING = "Pending"
REASON_STAGES_RUNNING = "StagesRunning"
REASON_QUEUED = "Queued"  # spec.queueName: every running stage's Job waits for Kueue to admit it
REASON_SUCCEEDED = "PipelineSucceeded"
REASON_STAGE_FAILED = "StageFailed"
REASON_INVALID_SPEC = "InvalidSpec"
REASON_GATE_NOT_MET = "GateNotMet"  # a stage's gate (metric threshold) does not hold: dependants never start
REASON_SUSPENDING = "Suspending"  # spec.suspend: running stages are saving a checkpoint and stopping
REASON_SUSPENDED = "Suspended"  # spec.suspend: nothing runs
REASON_RESUMED = "Resumed"  # spec.suspend went back to false


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: str,
    generation: int | None = None,
) -> bool:
    """Set one condition in place; return whether anything changed."""
    value = "True" if status else "False"
    for i, current in enumerate(conditions):
        if current.type != type_:
            continue
        if (current.status, current.reason, current.message, current.observed_generation) == (
            value, reason, message, generation,
        ):
            return False
        when = current.last_transition_time if current.status == value else now
        conditions[i] = Condition(
            type=type_, status=value, reason=reason, message=message,
            last_transition_time=when, observed_generation=generation,
        )
        return True
    conditions.append(
        Condition(
            type=type_, status=value, reason=reason, message=message,
            last_transition_time=now, observed_generation=generation,
        )
    )
    return True


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def rfc3339(moment: datetime) -> str:
    """Kubernetes' timestamp format (seconds, UTC, `Z`)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
