"""The pipeline's ETA: the running stage's own estimate, the stages after it from a borrowed pace,
summed along the longest chain; nothing made up before a pace is measured."""

from __future__ import annotations

from refinery.api.run import ProgressRecord
from refinery.api.v1alpha1 import Phase, PipelineStatus, StageStatus
from refinery.core.eta import pipeline_seconds_left, tokens_per_step, words
from refinery.core.plan import AttemptState
from tests.builders import make_pipeline

from .planning import NOW, run, stamp

TRAIN = {"maxSteps": 100, "batchSize": 8, "seqLen": 64}


def chain():
    """pretrain -> sft -> (reward, dpo in parallel): dpo twice sft's tokens per step, reward too."""
    return (make_pipeline()
            .stage("pretrain", "pretrain", training=TRAIN)
            .stage("sft", "sft", from_="pretrain", training=TRAIN)
            .stage("reward", "reward", from_="sft", training={**TRAIN, "maxSteps": 50})
            .stage("dpo", "sft", from_="sft", training={**TRAIN, "maxSteps": 300})
            .obj())


def test_the_running_stage_reports_its_estimate_and_later_stages_borrow_its_pace():
    pipeline = chain()
    record = ProgressRecord(step=40, max_steps=100, estimated_remaining_seconds=60.0, seconds_per_step=1.0)
    status = PipelineStatus(stages=[StageStatus(name="pretrain", phase=Phase.running, attempt=1, start_time=stamp(-50))])
    out = run(pipeline, {"pretrain": [AttemptState(1, "Running", start_time=stamp(-50))]}, {"pretrain": record}, status).status
    pretrain = out.stage("pretrain")
    assert pretrain.estimated_remaining_seconds == 60.0 and pretrain.seconds_per_step == 1.0
    # pretrain 60 s + sft 100 x 1 s + the longer of reward (50 steps of pairs: 100 s) and the
    # 300-step "dpo" sft (300 s); no stage has finished, so no per-attempt overhead is known yet.
    assert out.estimated_remaining_seconds == 60 + 100 + 300
    assert out.eta == "7m40s"


def test_a_finished_stage_teaches_the_overhead_every_stage_pays_once():
    pipeline = make_pipeline().stage("pretrain", "pretrain", training=TRAIN).stage(
        "sft", "sft", from_="pretrain", training={**TRAIN, "seqLen": 128}).obj()
    by_name = {
        # 100 steps at 0.5 s plus 30 s of loading and saving
        "pretrain": StageStatus(name="pretrain", phase=Phase.succeeded, start_time=stamp(-80), completion_time=stamp(0),
                                max_steps=100, seconds_per_step=0.5),
        "sft": StageStatus(name="sft"),
    }
    # sft: 30 s overhead + 100 steps of twice the tokens at pretrain's pace per token (1 s a step)
    assert pipeline_seconds_left(pipeline.spec.run_stages, by_name, NOW) == 130


def test_no_estimate_before_any_pace_is_measured_nor_for_a_stage_sized_by_epochs():
    pipeline = make_pipeline().stage("pretrain", "pretrain", training=TRAIN).stage(
        "sft", "sft", from_="pretrain", training={"epochs": 2}).obj()
    blank = {s.name: StageStatus(name=s.name) for s in pipeline.spec.run_stages}
    assert pipeline_seconds_left(pipeline.spec.run_stages, blank, NOW) is None
    measured = {**blank, "pretrain": StageStatus(name="pretrain", phase=Phase.running, estimated_remaining_seconds=10.0,
                                                 seconds_per_step=0.1)}
    assert pipeline_seconds_left(pipeline.spec.run_stages, measured, NOW) is None  # sft's steps are not known yet


def test_a_failed_attempt_leaves_no_time_left_but_keeps_its_pace():
    pipeline = make_pipeline().stage("pretrain", "pretrain", training=TRAIN).obj()
    status = PipelineStatus(stages=[StageStatus(name="pretrain", phase=Phase.running, attempt=1, start_time=stamp(-50),
                                                estimated_remaining_seconds=30.0, seconds_per_step=0.7)])
    record = ProgressRecord(phase="Failed", step=40, max_steps=100, message="boom", failure_reason="TrainerError")
    attempts = {"pretrain": [AttemptState(1, "Failed", "TrainerError", "boom", start_time=stamp(-50), completion_time=stamp(0))]}
    stage = run(pipeline, attempts, {"pretrain": record}, status).status.stage("pretrain")
    assert stage.estimated_remaining_seconds is None and stage.seconds_per_step == 0.7


def test_tokens_per_step_counts_pairs_and_accumulation():
    pipeline = make_pipeline().stage("reward", "reward", model={"config": {"hiddenSize": 32}},
                                     training={"batchSize": 4, "seqLen": 32, "gradientAccumulationSteps": 2}).obj()
    assert tokens_per_step(pipeline.spec.stages[0]) == 4 * 32 * 2 * 2


def test_words():
    assert [words(s) for s in (None, 4.4, 75, 599, 600, 3 * 3600 + 20 * 60)] == [None, "4s", "1m15s", "9m59s", "10m", "3h20m"]
