"""Table-driven tests of the pure planner shared by the operator and local mode."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from refinery_operator.api.run import ProgressRecord
from refinery_operator.api.v1alpha1 import Checkpoint, PipelineStatus
from refinery_operator.core.conditions import get_condition
from refinery_operator.core.plan import AttemptState, Observed, plan
from tests.builders import chat_pipeline, make_pipeline

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
ROOT = "/workspace/default/p"


def ok(stage_attempt: int = 1) -> list[AttemptState]:
    return [AttemptState(stage_attempt, "Succeeded")]


def run(pipeline, attempts=None, records=None, status=None):
    if status is not None:
        pipeline = pipeline.model_copy(update={"status": status})
    return plan(pipeline, Observed(attempts or {}, records or {}), ROOT, NOW)


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
    pipeline = make_pipeline().stage("pretrain", "pretrain").obj()
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


def test_infrastructure_failures_spend_their_own_budget():
    pipeline = make_pipeline().stage("pretrain", "pretrain").obj()
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
    from refinery_operator.core.naming import job_name

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
