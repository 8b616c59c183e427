"""The planner (core/plan.py) on attempts that must be stopped or resumed: the start timeout,
`spec.suspend` and Kueue queues."""

from __future__ import annotations

import pytest

from refinery.api.v1alpha1 import TrainingPipeline
from refinery.core.conditions import get_condition
from refinery.core.plan import AttemptState
from tests.builders import make_pipeline
from tests.unit.planning import failed, ok, run, single, stamp


# ----------------------------------------------------------------------------------------------
# start timeout (image pull back-off, unschedulable)


@pytest.mark.parametrize(("state", "stopped", "requeue"), [
    (AttemptState(1, "Running", start_time=stamp(-100)), False, 800.0),
    (AttemptState(1, "Running", start_time=stamp(-900)), True, None),
    (AttemptState(1, "Running", start_time=stamp(-900), ready=True), False, None),
])
def test_an_attempt_that_never_gets_ready_fails_as_start_timeout(state, stopped, requeue):
    result = run(single(), {"pretrain": [state]})
    stops = [(s.attempt, s.action, s.reason) for s in result.stops]
    assert stops == ([(1, "fail", "StartTimeout")] if stopped else [])
    assert result.requeue_after == requeue
    if stopped:
        assert "ImagePullBackOff" in result.stops[0].message


# ----------------------------------------------------------------------------------------------
# suspend and queues


def suspended_pipeline(suspend=True, queue=None):
    manifest = make_pipeline().stage("pretrain", "pretrain").stage("sft", "sft", from_="pretrain").manifest()
    manifest["spec"].update(suspend=suspend, **({"queueName": queue} if queue else {}))
    return TrainingPipeline.model_validate(manifest)


@pytest.mark.parametrize(("suspend", "queue", "state", "stops", "stage_phase", "phase"), [
    (True, None, AttemptState(1, "Running", ready=True, pods_gone=False), [("suspend", 1)], "Running", "Suspended"),
    (True, None, AttemptState(1, "Pending", suspended=True, pods_gone=False), [], "Running", "Suspended"),
    (True, None, AttemptState(1, "Pending", suspended=True), [], "Suspended", "Suspended"),
    (False, None, AttemptState(1, "Pending", suspended=True), [("resume", 1)], "Running", "Running"),
    # With a queue, a suspended Job is Kueue's (queued or preempted): never resumed by us, and a
    # suspend deletes the Job instead (Kueue would undo our Job.suspend).
    (False, "team-a", AttemptState(1, "Pending", suspended=True), [], "Running", "Running"),
    (True, "team-a", AttemptState(1, "Pending", suspended=True), [("suspend", 1)], "Suspended", "Suspended"),
    (True, "team-a", AttemptState(1, "Running", deleting=True, pods_gone=True), [], "Suspended", "Suspended"),
])
def test_suspend_and_queues(suspend, queue, state, stops, stage_phase, phase):
    result = run(suspended_pipeline(suspend, queue), {"pretrain": [state]})
    assert [(s.action, s.attempt) for s in result.stops] == stops
    assert result.launches == ()
    assert (result.status.stage("pretrain").phase, result.status.phase) == (stage_phase, phase)
    suspended = get_condition(result.status.conditions, "Suspended")
    assert (suspended.status if suspended else None) == ("True" if suspend else None)


def test_a_pipeline_waiting_for_kueue_says_so():
    result = run(suspended_pipeline(False, "team-a"), {"pretrain": [AttemptState(1, "Pending", suspended=True)]})
    progressing = get_condition(result.status.conditions, "Progressing")
    assert (progressing.status, progressing.reason) == ("True", "Queued")
    assert progressing.message == "queued: pretrain waiting for Kueue (LocalQueue 'team-a')"
    admitted = run(suspended_pipeline(False, "team-a"), {"pretrain": [AttemptState(1, "Running", ready=True)]})
    assert get_condition(admitted.status.conditions, "Progressing").reason == "StagesRunning"


def test_a_suspended_stage_says_which_attempt_resumes():
    status = run(suspended_pipeline(False), {"pretrain": [AttemptState(1, "Running", ready=True)]}).status
    # with a queue, suspending deleted the Job: the same attempt is re-created on resume
    deleted = run(suspended_pipeline(True, "team-a"), {}, status=status).status.stage("pretrain")
    assert deleted.phase == "Suspended"
    assert deleted.message == "suspended; attempt 1 resumes from its newest checkpoint when spec.suspend is false"
    retry = run(suspended_pipeline(), {"pretrain": [failed(1, infrastructure=True)]}).status.stage("pretrain")
    assert retry.message == "suspended; the next attempt starts when spec.suspend is false"


def test_a_suspended_pipeline_starts_nothing_and_resumes_where_it_was():
    stopped = run(suspended_pipeline(), {"pretrain": ok()})
    assert stopped.launches == () and stopped.status.phase == "Suspended"
    assert get_condition(stopped.status.conditions, "Suspended").reason == "Suspended"
    resumed = run(suspended_pipeline(False), {"pretrain": ok()}, status=stopped.status)
    assert [(l.stage, l.attempt) for l in resumed.launches] == [("sft", 1)]
    assert get_condition(resumed.status.conditions, "Suspended").status == "False"


def test_a_suspended_retry_waits_without_spending_budget():
    failures = {"pretrain": [failed(1, infrastructure=True)]}
    result = run(suspended_pipeline(), failures)
    assert result.launches == () and result.status.stage("pretrain").phase == "Suspended"
