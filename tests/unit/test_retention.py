"""core/retention.py: which complete checkpoints of a stage may go (table-driven, no volume)."""

from __future__ import annotations

import pytest

from refinery.api.v1alpha1 import (
    CheckpointRetention, KeepBest, Phase, PipelineStatus, StageInputs, StageStatus,
)
from refinery.core.retention import (
    CheckpointInfo, checkpoints_to_delete, prune_arguments, protected_paths, stages_to_prune,
)
from tests.builders import chat_pipeline

STAGE = "/workspace/default/chat/sft"


def ckpt(step, attempt=1, complete=True, **metrics):
    return CheckpointInfo(f"{STAGE}/attempt-{attempt}/checkpoints/checkpoint-{step}", step, attempt, complete, metrics)


FOUR = [ckpt(10, evalLoss=2.0), ckpt(20, evalLoss=1.0), ckpt(30, evalLoss=1.5), ckpt(40, attempt=2, evalLoss=1.8)]

CASES = {
    "keep the newest 2": (FOUR, CheckpointRetention(keep_last=2), [], [20, 10]),
    "keep the newest 1": (FOUR, CheckpointRetention(keep_last=1), [], [30, 20, 10]),
    "keep all 4": (FOUR, CheckpointRetention(keep_last=4), [], []),
    "best by evalLoss, plus the newest": (FOUR, CheckpointRetention(keep_best=KeepBest(metric="evalLoss")), [], [30, 10]),
    "best 2 by max": (FOUR, CheckpointRetention(keep_best=KeepBest(metric="evalLoss", mode="max", count=2)), [], [30, 20]),
    "last 1 and best 1": (FOUR, CheckpointRetention(keep_last=1, keep_best=KeepBest(metric="evalLoss")), [], [30, 10]),
    "a metric no checkpoint has keeps the newest": (FOUR, CheckpointRetention(keep_best=KeepBest(metric="x")), [], [30, 20, 10]),
    "partial checkpoints are never candidates": (
        [ckpt(50, attempt=3, complete=False), *FOUR], CheckpointRetention(keep_last=1), [], [30, 20, 10]),
    "an input path inside a checkpoint protects it": (
        FOUR, CheckpointRetention(keep_last=1), [f"{STAGE}/attempt-1/checkpoints/checkpoint-10"], [30, 20]),
    "a protected attempt folder protects its checkpoints": (
        FOUR, CheckpointRetention(keep_last=1), [f"{STAGE}/attempt-1"], []),
    "a model saved inside a checkpoint protects it": (
        FOUR, CheckpointRetention(keep_last=1), [f"{STAGE}/attempt-1/checkpoints/checkpoint-20/merged"], [30, 10]),
    "nothing there": ([], CheckpointRetention(keep_last=1), [], []),
}


@pytest.mark.parametrize("case", CASES)
def test_checkpoints_to_delete(case):
    found, policy, protected, deleted_steps = CASES[case]
    assert [c.step for c in checkpoints_to_delete(found, policy, protected)] == deleted_steps


def test_same_step_in_two_attempts_the_later_attempt_is_newer():
    found = [ckpt(20, attempt=1), ckpt(20, attempt=2)]
    assert [c.attempt for c in checkpoints_to_delete(found, CheckpointRetention(keep_last=1))] == [1]


def test_a_policy_must_keep_something():
    with pytest.raises(ValueError, match="keepLast, keepBest"):
        CheckpointRetention()


def statuses(**phases):
    return PipelineStatus(stages=[StageStatus(name=n, phase=p, attempt=a) for n, (p, a) in phases.items()])


def with_policy(policy=CheckpointRetention(keep_last=1)):
    p = chat_pipeline("chat").obj()
    return p.model_copy(update={"spec": p.spec.model_copy(update={"checkpoints": policy})})


EDGES = {
    "just succeeded": (statuses(sft=(Phase.running, 1)), statuses(sft=(Phase.succeeded, 1)), ["sft"]),
    "already succeeded": (statuses(sft=(Phase.succeeded, 1)), statuses(sft=(Phase.succeeded, 1)), []),
    "re-run succeeded (new attempt)": (statuses(sft=(Phase.succeeded, 1)), statuses(sft=(Phase.succeeded, 3)), ["sft"]),
    "first status already succeeded": (None, statuses(sft=(Phase.succeeded, 1)), ["sft"]),
    "failed stages keep everything": (statuses(sft=(Phase.running, 1)), statuses(sft=(Phase.failed, 1)), []),
    "running": (None, statuses(sft=(Phase.running, 1)), []),
}


@pytest.mark.parametrize("case", EDGES)
def test_stages_to_prune(case):
    previous, current, expected = EDGES[case]
    assert stages_to_prune(with_policy(), previous, current) == expected


def test_no_policy_no_prune():
    assert stages_to_prune(chat_pipeline("chat").obj(), None, statuses(sft=(Phase.succeeded, 1))) == []


def test_protected_paths_are_inputs_pointing_into_the_stage():
    pipeline = with_policy()
    ckpt_path = f"{STAGE}/attempt-1/checkpoints/checkpoint-20"
    status = PipelineStatus(stages=[
        StageStatus(name="sft"),
        StageStatus(name="reward", inputs=StageInputs(model=ckpt_path)),
        StageStatus(name="rlhf", inputs=StageInputs(model=f"{STAGE}/model", reward_model="/workspace/default/chat/reward/model")),
    ])
    assert protected_paths(pipeline, status, "sft", "/workspace/default/chat", "/workspace") == [ckpt_path, f"{STAGE}/model"]


def test_prune_arguments():
    policy = CheckpointRetention(keep_last=2, keep_best=KeepBest(metric="evalLoss", mode="min", count=1))
    assert prune_arguments(policy, STAGE, ["/a"]) == [
        "prune", "--stage-dir", STAGE, "--keep-last", "2", "--keep-best", "evalLoss:min:1", "--protect", "/a"]
