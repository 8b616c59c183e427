"""Events from status transitions: one per change, none when nothing changed."""

from __future__ import annotations

from refinery.api.v1alpha1 import PipelineStatus
from refinery.core.events import pipeline_events


def status(phase="Running", conditions=(), **stages):
    return PipelineStatus.model_validate({"phase": phase, "conditions": list(conditions),
                                          "stages": [{"name": n, **s} for n, s in stages.items()]})


def reasons(old, new):
    return [(e.type, e.reason) for e in pipeline_events(old, new)]


def test_a_stage_starting_checkpointing_failing_retrying_and_succeeding():
    started = status(sft=dict(phase="Running", attempt=1, jobName="p-sft-1"))
    assert reasons(None, started) == [("Normal", "StageStarted")]
    ckpt = status(sft=dict(phase="Running", attempt=1, lastCheckpoint={"step": 10, "path": "c"}))
    assert reasons(started, ckpt) == [("Normal", "CheckpointSaved")]
    assert reasons(ckpt, ckpt) == []  # nothing new: nothing posted
    failure = {"class": "Infrastructure", "reason": "Disrupted", "message": "evicted", "attempt": 1}
    failed = status(sft=dict(phase="Running", attempt=1, lastCheckpoint={"step": 10, "path": "c"}, lastFailure=failure))
    (event,) = pipeline_events(ckpt, failed)
    assert (event.type, event.reason) == ("Warning", "AttemptFailed") and "(Infrastructure, Disrupted)" in event.message
    disruption = {**failure, "class": "Disruption", "reason": "NodeLost", "message": "node b was lost"}
    (event,) = pipeline_events(ckpt, status(sft=dict(phase="Running", attempt=1, lastFailure=disruption)))
    assert (event.type, event.reason) == ("Warning", "AttemptDisrupted") and "disrupted (NodeLost): node b" in event.message
    retried = status(sft=dict(phase="Running", attempt=2, lastCheckpoint={"step": 10, "path": "c"}, lastFailure=failure))
    assert reasons(failed, retried) == [("Normal", "StageRetried")]
    done = status("Succeeded", sft=dict(phase="Succeeded", attempt=2, lastCheckpoint={"step": 10, "path": "c"},
                                        lastFailure=failure, output="/m"))
    assert reasons(retried, done) == [("Normal", "StageSucceeded"), ("Normal", "PipelineSucceeded")]


def test_gate_and_suspend_transitions():
    gate = [{"type": "Failed", "status": "True", "reason": "GateNotMet", "message": "gate not met", "lastTransitionTime": "t"}]
    assert reasons(status(), status("Failed", gate)) == [("Warning", "GateNotMet")]
    suspended = [{"type": "Suspended", "status": "True", "reason": "Suspended", "message": "", "lastTransitionTime": "t"}]
    resumed = [{"type": "Suspended", "status": "False", "reason": "Resumed", "message": "", "lastTransitionTime": "t"}]
    assert reasons(status(), status("Suspended", suspended)) == [("Normal", "Suspended")]
    assert reasons(status("Suspended", suspended), status("Running", resumed)) == [("Normal", "Resumed")]
