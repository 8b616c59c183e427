"""Table-driven tests of the pure planner shared by the operator and local mode."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from refinery.api.run import ProgressRecord
from refinery.api.v1alpha1 import Checkpoint, PipelineStatus, TrainingPipeline
from refinery.core.conditions import get_condition
from refinery.core.plan import AttemptState, Observed, plan
from tests.builders import chat_pipeline, make_pipeline
from tests.unit.planning import NOW, ROOT, at, failed, ok, run, single, stamp

@pytest.mark.parametrize(
    ("attempts", "launched", "phase"),
    [
        ({}, [("pretrain", 1)], "Running"),
        ({"pretrain": [AttemptState(1, "Running")]}, [], "Running"),
        ({"pretrain": ok()}, [("sft", 1)], "Running"),
        ({"pretrain": ok(), "sft": ok()}, [("reward", 1)], "Running"),
        ({"pretrain": ok(), "sft": ok(), "reward": ok()}, [("rlhf", 1)], "Running"),
        ({"pretrain": ok(), "sft": ok(), "reward": ok(), "rlhf": ok()}, [], "Succeeded"),
    ],
)
def test_classic_recipe_runs_stage_after_stage(attempts, launched, phase):
    result = run(chat_pipeline().obj(), attempts)
    assert [(l.stage, l.attempt) for l in result.launches] == launched
    assert result.status.phase == phase


def test_independent_stages_start_together():
    pipeline = (
        make_pipeline().stage("base", "pretrain")
        .stage("sft-a", "sft", from_="base").stage("sft-b", "sft", from_="base").obj()
    )
    result = run(pipeline, {"base": ok()})
    assert sorted(l.stage for l in result.launches) == ["sft-a", "sft-b"]


def test_inputs_are_the_upstream_outputs():
    result = run(chat_pipeline().obj(), {"pretrain": ok(), "sft": ok(), "reward": ok()},
                 records={"sft": ProgressRecord(phase="Succeeded", output="/elsewhere/sft/model")})
    (launch,) = result.launches
    assert launch.inputs.model == "/elsewhere/sft/model"
    assert launch.inputs.reward_model == f"{ROOT}/reward/model"
    assert result.status.stage("rlhf").inputs == launch.inputs


def test_application_failure_is_retried_once_then_fails_the_pipeline():
    pipeline = make_pipeline().stage("pretrain", "pretrain", retries={"backoffSeconds": 0}).obj()
    first = run(pipeline, {"pretrain": [AttemptState(1, "Failed", "TrainerError", "exit code 1")]})
    assert [(l.stage, l.attempt) for l in first.launches] == [("pretrain", 2)]
    assert first.status.stage("pretrain").restarts == 1
    assert first.status.phase == "Running"

    failures = [AttemptState(1, "Failed", "TrainerError", "boom"), AttemptState(2, "Failed", "TrainerError", "boom")]
    second = run(pipeline, {"pretrain": failures}, status=first.status)
    assert second.launches == ()
    stage = second.status.stage("pretrain")
    assert (second.status.phase, stage.phase) == ("Failed", "Failed")
    assert stage.last_failure.class_ == "Application"
    assert get_condition(second.status.conditions, "Failed").status == "True"


def test_a_misconfigured_stage_is_not_retried_whatever_budget_is_left():
    """The trainer's `Misconfigured` (settings that do not fit the model or data) fails the stage at once."""
    pipeline = make_pipeline().stage("pretrain", "pretrain", retries={"backoffSeconds": 0, "application": 5}).obj()
    record = ProgressRecord(phase="Failed", attempt=1, failure_reason="Misconfigured",
                            message="training.seqLen 4096 is beyond the model's 128 positions: set training.seqLen <= 128")
    result = run(pipeline, {"pretrain": [AttemptState(1, "Failed", "TrainerError", "exit code 1")]},
                 records={"pretrain": record})
    stage = result.status.stage("pretrain")
    assert result.launches == () and (result.status.phase, stage.phase, stage.restarts) == ("Failed", "Failed", 0)
    assert stage.last_failure.reason == "Misconfigured"
    assert "not retried" in stage.message and "set training.seqLen <= 128" in stage.message


def test_infrastructure_failures_spend_their_own_budget():
    pipeline = make_pipeline().stage("pretrain", "pretrain", retries={"backoffSeconds": 0}).obj()
    evicted = [AttemptState(i, "Failed", "Evicted", "node drained", infrastructure=True) for i in (1, 2, 3)]
    result = run(pipeline, {"pretrain": evicted})
    assert [(l.stage, l.attempt) for l in result.launches] == [("pretrain", 4)]
    assert result.status.stage("pretrain").last_failure.class_ == "Infrastructure"


def test_trainer_message_beats_the_job_reason():
    pipeline = make_pipeline().stage("pretrain", "pretrain", retries={"application": 0}).obj()
    record = ProgressRecord(phase="Failed", message="data/pretrain.txt: file not found", failure_reason="BadData")
    result = run(pipeline, {"pretrain": [AttemptState(1, "Failed", "BackoffLimitExceeded", "Job failed")]}, {"pretrain": record})
    failure = result.status.stage("pretrain").last_failure
    assert (failure.reason, failure.message) == ("BadData", "data/pretrain.txt: file not found")


def test_no_new_stage_starts_after_a_failure():
    pipeline = (
        make_pipeline().stage("a", "pretrain", retries={"application": 0})
        .stage("b", "pretrain").stage("c", "sft", from_="b").obj()
    )
    result = run(pipeline, {"a": [AttemptState(1, "Failed")], "b": ok()})
    assert result.launches == ()
    assert result.status.phase == "Failed"


def test_progress_record_is_folded_into_status():
    record = ProgressRecord(
        step=30, max_steps=60, progress=0.5, checkpoints=2,
        last_checkpoint=Checkpoint(step=30, path=f"{ROOT}/pretrain/attempt-1/checkpoints/checkpoint-30", time="t"),
        metrics={"trainLoss": 2.5},
    )
    result = run(chat_pipeline().obj(), {"pretrain": [AttemptState(1, "Running")]}, {"pretrain": record})
    stage = result.status.stage("pretrain")
    assert (stage.progress, stage.checkpoints, stage.last_checkpoint.step) == (0.5, 2, 30)
    assert stage.metrics == {"trainLoss": 2.5}
    assert (result.status.current_stage, result.status.checkpoint_step, result.status.progress) == ("pretrain", 30, "0/4")


def test_a_second_reconcile_with_nothing_new_changes_nothing():
    later = datetime(2026, 1, 2, 4, 0, 0, tzinfo=timezone.utc)
    pipeline = chat_pipeline().obj()
    attempts = {"pretrain": ok(), "sft": [AttemptState(1, "Running")]}
    first = run(pipeline, attempts)
    again = plan(pipeline.model_copy(update={"status": first.status}), Observed(attempts, {}), ROOT, later)
    assert again.status == first.status


def test_restarted_planner_recreates_the_same_attempt_not_a_new_one():
    # The status says attempt 2 was launched, but its Job is not observed yet (or was deleted):
    # the planner asks for attempt 2 again (an idempotent create), never attempt 3.
    pipeline = make_pipeline().stage("pretrain", "pretrain").obj()
    status = PipelineStatus.model_validate({"stages": [{"name": "pretrain", "phase": "Running", "attempt": 2}]})
    result = run(pipeline, {}, status=status)
    assert [(l.stage, l.attempt) for l in result.launches] == [("pretrain", 2)]


def test_long_names_give_valid_deterministic_job_names():
    from refinery.core.naming import job_name

    name = job_name("a" * 60, "stage-with-a-long-name", 12)
    assert len(name) <= 63 and name == job_name("a" * 60, "stage-with-a-long-name", 12)
    assert name != job_name("a" * 60, "stage-with-a-long-name", 13)


def test_inputs_of_a_running_stage_are_recomputed_not_remembered():
    # A status read back from a watch may predate the patch that recorded the inputs.
    attempts = {"pretrain": ok(), "sft": [AttemptState(1, "Running")]}
    result = run(chat_pipeline().obj(), attempts, status=PipelineStatus())
    assert result.launches == ()
    assert result.status.stage("sft").inputs.model == f"{ROOT}/pretrain/model"
    assert result.status.stage("pretrain").inputs is None  # it starts from its own `model`


def test_a_stage_that_succeeded_on_retry_keeps_its_last_failure():
    pipeline = make_pipeline().stage("pretrain", "pretrain").obj()
    attempts = {"pretrain": [AttemptState(1, "Failed", "Disrupted", "node lost", infrastructure=True), AttemptState(2, "Succeeded")]}
    stage = run(pipeline, attempts).status.stage("pretrain")
    assert (stage.phase, stage.restarts, stage.last_failure.reason) == ("Succeeded", 1, "Disrupted")


# ----------------------------------------------------------------------------------------------
# failure classes, back-off, pods gone


@pytest.mark.parametrize(("failures", "backoff", "wait"), [
    ([failed(1)], 10, 10),
    ([failed(1), failed(2)], 10, 20),
    ([failed(1, infrastructure=True), failed(2, infrastructure=True), failed(3, infrastructure=True)], 10, 40),
    ([failed(i, infrastructure=True) for i in range(1, 10)], 10, 320),  # capped at 32x
    ([failed(1)], 0, 0),
])
def test_retries_back_off_exponentially(failures, backoff, wait):
    pipeline = single(retries={"application": 9, "infrastructure": 9, "backoffSeconds": backoff})
    early = plan(pipeline, Observed({"pretrain": failures}), ROOT, at(wait - 1)) if wait else None
    if early is not None:
        assert early.launches == ()
        stage = early.status.stage("pretrain")
        assert stage.next_attempt_time == stamp(wait) and stage.phase == "Running"
        assert early.requeue_after == pytest.approx(1.0)
        assert f"starts at {stamp(wait)}" in stage.message
    later = plan(pipeline.model_copy(update={"status": early.status if early else None}),
                 Observed({"pretrain": failures}), ROOT, at(wait))
    assert [(l.stage, l.attempt) for l in later.launches] == [("pretrain", len(failures) + 1)]
    assert later.status.stage("pretrain").next_attempt_time is None


def test_no_attempt_starts_while_a_pod_of_the_previous_one_remains():
    pipeline = single(retries={"backoffSeconds": 0})
    terminating = failed(1, infrastructure=True, pods_gone=False)
    result = run(pipeline, {"pretrain": [terminating]})
    assert result.launches == ()
    assert "waiting for the pods of attempt 1 to terminate" in result.status.stage("pretrain").message
    assert [l.attempt for l in run(pipeline, {"pretrain": [failed(1, infrastructure=True)]}).launches] == [2]


@pytest.mark.parametrize(("attempts", "retried", "by_class"), [
    # an eviction spends the infrastructure budget only: the application budget (0) is untouched
    ([failed(1, infrastructure=True)], True, (0, 1)),
    ([failed(1, infrastructure=True), failed(2, infrastructure=True, reason="OOMKilled")], True, (0, 2)),
    ([failed(1)], False, (0, 0)),
    ([failed(1, infrastructure=True), failed(2)], False, (0, 1)),
])
def test_each_failure_class_spends_its_own_budget(attempts, retried, by_class):
    pipeline = single(retries={"application": 0, "infrastructure": 3, "backoffSeconds": 0})
    result = run(pipeline, {"pretrain": attempts})
    stage = result.status.stage("pretrain")
    assert bool(result.launches) == retried
    assert (stage.restarts_by_class.application, stage.restarts_by_class.infrastructure) == by_class
    assert stage.restarts == sum(by_class)
    if not retried:
        assert result.status.phase == "Failed"
        assert "application retry budget (0) is spent" in stage.message


def test_nan_loss_reported_by_the_trainer_is_an_application_failure():
    pipeline = single(retries={"application": 0})
    record = ProgressRecord(phase="Failed", message="loss became NaN at step 12: lower learningRate", failure_reason="NanLoss")
    result = run(pipeline, {"pretrain": [failed(1, reason="TrainerError")]}, {"pretrain": record})
    failure = result.status.stage("pretrain").last_failure
    assert (failure.class_, failure.reason, failure.attempt) == ("Application", "NanLoss", 1)
    assert "lower learningRate" in get_condition(result.status.conditions, "Failed").message


def test_gpu_seconds_and_lost_gpu_seconds():
    pipeline = single(resources={"gpus": 4}, retries={"backoffSeconds": 0})
    record = ProgressRecord(attempt=2, step=30, update_time=stamp(150),
                            last_checkpoint=Checkpoint(step=20, path="/c", time=stamp(-40)))
    first = AttemptState(1, "Failed", "Disrupted", "evicted", infrastructure=True, start_time=stamp(-100), completion_time=stamp(0))
    second = AttemptState(2, "Running", start_time=stamp(50), ready=True)
    stage = run(pipeline, {"pretrain": [first, second]}, {"pretrain": record}).status.stage("pretrain")
    assert stage.gpu_seconds == 4 * (100 + 100)  # attempt 1: 100 s; attempt 2: until its last report
    assert stage.lost_gpu_seconds == 4 * 40  # from the checkpoint at -40 to the failure at 0


def test_gpu_seconds_keep_the_time_before_a_suspension():
    """Resuming a Job restarts its startTime: the time before is kept on the Job (held_seconds)."""
    pipeline = single(resources={"gpus": 2})
    running = AttemptState(1, "Running", start_time=stamp(-300), ready=True, pods_gone=False)
    stop = run(suspended_pipeline_of(pipeline), {"pretrain": [running]}).stops[0]
    assert (stop.action, stop.held_seconds) == ("suspend", 300.0)  # from the Job's start to now

    record = ProgressRecord(attempt=1, step=30, update_time=stamp(-5))  # the last report, before SIGTERM
    # While suspended (and while the Job still shows the old segment's startTime) only the held time counts.
    paused = AttemptState(1, "Running", start_time=stamp(-400), suspended=True, pods_gone=False, held_seconds=300.0)
    assert run(pipeline, {"pretrain": [paused]}, {"pretrain": record}).status.stage("pretrain").gpu_seconds == 2 * 300
    # Resumed: a new startTime, and the held time on top of the new segment.
    record = ProgressRecord(attempt=1, step=40, update_time=stamp(0))
    resumed = AttemptState(1, "Running", start_time=stamp(-60), ready=True, pods_gone=False, held_seconds=300.0)
    assert run(pipeline, {"pretrain": [resumed]}, {"pretrain": record}).status.stage("pretrain").gpu_seconds == 2 * (300 + 60)
    # A second suspension adds to what the Job already held.
    again = run(suspended_pipeline_of(pipeline), {"pretrain": [resumed]}).stops[0]
    assert again.held_seconds == 300.0 + 60.0


def suspended_pipeline_of(pipeline):
    return pipeline.model_copy(update={"spec": pipeline.spec.model_copy(update={"suspend": True})})


def test_lost_gpu_seconds_are_counted_once_per_failure():
    pipeline = single(resources={"gpus": 2}, retries={"backoffSeconds": 0})
    attempts = {"pretrain": [failed(1, infrastructure=True)]}
    first = run(pipeline, attempts)
    again = plan(pipeline.model_copy(update={"status": first.status}), Observed(attempts), ROOT, at(60))
    assert first.status.stage("pretrain").lost_gpu_seconds == again.status.stage("pretrain").lost_gpu_seconds == 200


def test_a_second_reconcile_during_back_off_changes_nothing():
    pipeline = single()
    attempts = {"pretrain": [failed(1)]}
    first = run(pipeline, attempts)
    again = plan(pipeline.model_copy(update={"status": first.status}), Observed(attempts), ROOT, at(3))
    assert again.status == first.status and again.launches == ()


# ----------------------------------------------------------------------------------------------
# gates


def gated(value, metrics):
    pipeline = (make_pipeline().stage("pretrain", "pretrain").stage("sft", "sft", from_="pretrain")
                .stage("reward", "reward", from_="sft", gate={"metric": "evalAccuracy", "operator": ">=", "value": value})
                .stage("rlhf", "rlhf", from_="sft", reward_model="reward").obj())
    record = ProgressRecord(phase="Succeeded", metrics=metrics)
    return run(pipeline, {"pretrain": ok(), "sft": ok(), "reward": ok()}, {"reward": record})


def test_a_gate_that_holds_lets_dependants_start():
    result = gated(0.8, {"evalAccuracy": 0.85})
    assert [l.stage for l in result.launches] == ["rlhf"]


@pytest.mark.parametrize(("metrics", "words"), [
    ({"evalAccuracy": 0.62}, "gate evalAccuracy >= 0.8 not met: evalAccuracy = 0.62"),
    ({"evalLoss": 0.3}, "did not report evalAccuracy (reported: evalLoss)"),
])
def test_a_gate_that_fails_fails_the_pipeline(metrics, words):
    result = gated(0.8, metrics)
    assert result.launches == ()
    assert result.status.phase == "Failed"
    failed_condition = get_condition(result.status.conditions, "Failed")
    assert (failed_condition.status, failed_condition.reason) == ("True", "GateNotMet")
    assert words in failed_condition.message and words in result.status.stage("reward").message


# ----------------------------------------------------------------------------------------------
# re-runs


def finished(attempt=1):
    return [AttemptState(attempt, "Succeeded", start_time=stamp(-10), completion_time=stamp(-5))]


def done_chat():
    pipeline = chat_pipeline().obj()
    attempts = {name: finished() for name in ("pretrain", "sft", "reward", "rlhf")}
    return pipeline, attempts, run(pipeline, attempts).status


def test_rerun_from_annotation_reruns_the_stage_and_downstream_only():
    pipeline, attempts, status = done_chat()
    result = plan(pipeline.model_copy(update={"status": status}), Observed(attempts, rerun_request="sft"), ROOT, NOW)
    assert [(l.stage, l.attempt, l.run) for l in result.launches] == [("sft", 2, 1)]
    assert result.launches[0].inputs.model == f"{ROOT}/pretrain/model"  # upstream output reused
    by_name = {s.name: s for s in result.status.stages}
    assert by_name["pretrain"].phase == "Succeeded" and by_name["pretrain"].run == 0
    assert [(by_name[n].phase, by_name[n].run, by_name[n].first_attempt) for n in ("reward", "rlhf")] == [("Pending", 1, 2)] * 2
    assert result.status.rerun_request == "sft" and result.status.phase == "Running"
    # Handled: the same annotation value does nothing more; a new value re-runs again.
    again = plan(pipeline.model_copy(update={"status": result.status}), Observed(attempts, rerun_request="sft"), ROOT, NOW)
    assert [(l.stage, l.attempt) for l in again.launches] == [("sft", 2)]  # the same, idempotent launch
    assert again.status.stage("sft").run == 1


def test_a_rerun_stage_reads_its_new_run_and_hands_its_new_output_downstream():
    pipeline, attempts, status = done_chat()
    first = plan(pipeline.model_copy(update={"status": status}), Observed(attempts, rerun_request="reward@1"), ROOT, NOW)
    attempts = {**attempts, "reward": attempts["reward"] + finished(2)}
    old_record = ProgressRecord(attempt=1, phase="Succeeded", metrics={"evalAccuracy": 0.1}, output="/old")
    second = plan(pipeline.model_copy(update={"status": first.status}), Observed(attempts, {"reward": old_record}, "reward@1"), ROOT, NOW)
    (launch,) = second.launches
    assert (launch.stage, launch.attempt, launch.run) == ("rlhf", 2, 1)
    assert launch.inputs.reward_model == f"{ROOT}/reward/reruns/1/model"  # not the old run's, nor its old record's


def test_a_rerun_stops_the_attempts_it_replaces():
    pipeline = chat_pipeline().obj()
    attempts = {"pretrain": finished(), "sft": [AttemptState(1, "Running", ready=True, pods_gone=False)]}
    status = run(pipeline, attempts).status
    result = plan(pipeline.model_copy(update={"status": status}), Observed(attempts, rerun_request="pretrain"), ROOT, NOW)
    assert [(s.stage, s.attempt, s.action, s.reason) for s in result.stops] == [("sft", 1, "fail", "Superseded")]
    assert [(l.stage, l.attempt, l.run) for l in result.launches] == [("pretrain", 2, 1)]  # sft waits for it
    assert result.status.stage("sft").first_attempt == 2


def test_a_changed_stage_spec_reruns_that_stage_and_its_dependants():
    pipeline, attempts, status = done_chat()
    manifest = chat_pipeline().manifest()
    manifest["spec"]["stages"][2]["training"] = {"maxSteps": 99}  # reward
    changed = TrainingPipeline.model_validate(manifest).model_copy(update={"status": status})
    result = plan(changed, Observed(attempts), ROOT, NOW)
    assert [(l.stage, l.attempt, l.run) for l in result.launches] == [("reward", 2, 1)]
    assert [s.run for s in result.status.stages] == [0, 0, 1, 1]
    unchanged = plan(pipeline.model_copy(update={"status": status}), Observed(attempts), ROOT, NOW)
    assert unchanged.launches == () and [s.run for s in unchanged.status.stages] == [0, 0, 0, 0]
