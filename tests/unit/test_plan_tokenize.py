"""The tokenize step of a pretrain stage (`data.tokenize`, core/tokenize.py) as plan() decides it:
after the inputs check, before the stage's first attempt; retried by failure class with the
stage's back-off, only when the failed attempt's pods are gone; the stage fails when the
budget is spent; the stage starts once the step succeeded, and a re-run gets a step of its own."""

from __future__ import annotations

from refinery.api.v1alpha1 import Phase, PipelineStatus, StageStatus
from refinery.core.plan import AttemptState, Observed, plan
from refinery.core.tokenize import TokenizeAttempt
from tests.builders import make_pipeline
from tests.unit.planning import NOW, ROOT, failed, stamp


def pipeline(workers: int = 4, **retries):
    stage = {"data": {"path": "data/shards", "tokenize": {"workers": workers}}}
    if retries:
        stage["retries"] = retries
    return make_pipeline().stage("pretrain", "pretrain", **stage).stage("sft", "sft", from_="pretrain").obj()


def step(*states: AttemptState, run: int = 0, completed: int = 0) -> dict:
    return {"pretrain": [TokenizeAttempt(run, s, completed) for s in states]}


def decide(p, tokenize=None, attempts=None, status=None, now=NOW):
    if status is not None:
        p = p.model_copy(update={"status": status})
    return plan(p, Observed(attempts or {}, tokenize=tokenize or {}), ROOT, now)


def test_the_step_starts_before_the_stage_and_the_stage_waits_for_it():
    result = decide(pipeline())
    assert result.launches == ()
    [launch] = result.tokenize_launches
    assert (launch.attempt, launch.workers, launch.stage_launch.stage, launch.stage_launch.attempt) == (1, 4, "pretrain", 1)
    stage = result.status.stage("pretrain")
    assert stage.phase == Phase.running and stage.job_name is None
    assert stage.tokenize.model_dump(by_alias=True, exclude_none=True) == {
        "phase": "Running", "workers": 4, "attempt": 1, "jobName": "p-pretrain-tokenize-0-1", "completedWorkers": 0,
        "retries": 0}
    assert stage.message == "tokenizing the corpus before the stage starts: Job p-pretrain-tokenize-0-1, 0 of 4 workers done"


def test_nothing_starts_before_the_inputs_are_checked():
    p = pipeline()
    result = plan(p, Observed(sources_ready=False), ROOT, NOW)
    assert result.tokenize_launches == () and result.waiting_for_inputs == ("pretrain",)


def test_a_running_step_shows_its_workers_done_and_starts_nothing():
    result = decide(pipeline(), step(AttemptState(1, "Running", start_time=stamp(-5)), completed=3))
    assert result.tokenize_launches == () and result.launches == ()
    assert result.status.stage("pretrain").tokenize.completed_workers == 3
    assert "3 of 4 workers done" in result.status.stage("pretrain").message


def test_the_stage_starts_once_the_step_succeeded_and_keeps_showing_it():
    result = decide(pipeline(), step(AttemptState(1, "Succeeded", completion_time=stamp(-1)), completed=4))
    [launch] = result.launches
    assert (launch.stage, launch.attempt) == ("pretrain", 1) and result.tokenize_launches == ()
    stage = result.status.stage("pretrain")
    assert stage.tokenize.phase == Phase.succeeded and stage.tokenize.completed_workers == 4
    assert stage.job_name == "p-pretrain-1" and stage.message is None


def test_a_failed_step_is_retried_after_the_back_off_resuming_its_shards():
    p = pipeline(application=2, backoffSeconds=30)
    first = failed(1, seconds=-10)  # failed 10 s ago: 20 s of back-off left
    waiting = decide(p, step(first))
    assert waiting.tokenize_launches == () and waiting.requeue_after == 20
    assert waiting.status.stage("pretrain").tokenize.last_failure.reason == "TokenizeFailed"
    assert "attempt 2 starts when its back-off ends" in waiting.status.stage("pretrain").message

    later = decide(p, step(failed(1, seconds=-31)))
    [retry] = later.tokenize_launches
    assert retry.attempt == 2
    shown = later.status.stage("pretrain")
    assert (shown.tokenize.attempt, shown.tokenize.retries, shown.tokenize.job_name) == (2, 1, "p-pretrain-tokenize-0-2")
    assert "(retry 1: the shards already complete are skipped)" in shown.message


def test_no_retry_while_a_pod_of_the_failed_attempt_remains():
    result = decide(pipeline(), step(failed(1, seconds=-600, pods_gone=False)))
    assert result.tokenize_launches == ()
    assert result.status.stage("pretrain").phase == Phase.running


def test_the_stage_fails_when_the_steps_budget_is_spent_and_nothing_starts():
    p = pipeline(application=1)
    result = decide(p, step(failed(1, seconds=-600), failed(2, seconds=-300)))
    assert result.tokenize_launches == () and result.launches == ()
    stage = result.status.stage("pretrain")
    assert stage.phase == Phase.failed and stage.last_failure.reason == "TokenizeFailed"
    assert stage.tokenize.phase == Phase.failed and stage.tokenize.retries == 1
    assert stage.message.startswith("the tokenize step failed on attempt 2 and its retry budget is spent")
    assert result.status.phase == Phase.failed


def test_an_evicted_worker_is_a_disruption_retried_at_once_on_its_own_budget():
    evicted = failed(1, seconds=-1, infrastructure=True, disruption=True, reason="Disrupted")
    [retry] = decide(pipeline(application=0), step(evicted)).tokenize_launches
    assert retry.attempt == 2


def test_a_rerun_of_the_stage_gets_a_step_of_its_own():
    status = PipelineStatus(stages=[StageStatus(name="pretrain", run=1, first_attempt=2, attempt=1)])
    result = decide(pipeline(), step(AttemptState(1, "Succeeded"), run=0), status=status)
    [launch] = result.tokenize_launches
    assert launch.stage_launch.run == 1 and launch.attempt == 1 and result.launches == ()
    assert result.status.stage("pretrain").tokenize.job_name == "p-pretrain-tokenize-1-1"
