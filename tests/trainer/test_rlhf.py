"""rlhf on the example task: RL against the reward model raises the held-out reward over the SFT
policy's, and — because the reward model learnt the truth — the share of right answers too."""

from __future__ import annotations

import math

import pytest

from refinery.api.run import CHECKPOINT_MARKER

from .conftest import read_json
from .example_task import accuracy, eval_prompts, example_models, example_run, model_dir, run_stage

pytestmark = pytest.mark.slow

RL = {"numGenerations": 4, "maxCompletionLength": 4, "beta": 0.05, "evalPrompts": 128}


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    return example_models(tmp_path_factory.getbasetemp() / "example")


def rlhf_run(ws, example, name="rlhf", rl=None, **fields):
    """An rlhf StageRun from the example's sft policy, scored by its reward model."""
    return example_run(ws, name, "rlhf", from_="sft", stage={"rewardModel": "reward", "rl": {**RL, **(rl or {})}},
                       initModel=str(model_dir(example, "sft")), rewardModel=str(model_dir(example, "reward")),
                       **fields)


def test_rloo_raises_reward_and_accuracy(example, workspace):
    result = run_stage(workspace, rlhf_run(workspace, example))
    metrics = result["metrics"]
    # Reward-model units; the SFT policy answers 4 of 10 animals wrongly, each worth ~10 units.
    assert metrics["meanReward"] > metrics["baselineMeanReward"] + 1.0
    assert math.isfinite(metrics["kl"]) and "trainLoss" in metrics and "trainReward" in metrics
    assert result["steps"] == 100

    prompts = eval_prompts()[:128]
    before, after = accuracy(model_dir(example, "sft"), prompts), accuracy(workspace / "p" / "rlhf" / "model", prompts)
    assert after > before + 0.1, (before, after)


def test_grpo_raises_reward(example, workspace):
    run = rlhf_run(workspace, example, rl={"algorithm": "grpo"}, training={"maxSteps": 60, "saveSteps": 60})
    metrics = run_stage(workspace, run)["metrics"]
    assert metrics["meanReward"] > metrics["baselineMeanReward"] + 0.5
    assert math.isfinite(metrics["kl"])


def test_rloo_with_lora_trains_only_adapters_and_raises_reward(example, workspace):
    run = rlhf_run(workspace, example, "rl-lora", training={"maxSteps": 60, "saveSteps": 60, "learningRate": 5e-3,
                                                              "lora": {"r": 8, "alpha": 16}})
    metrics = run_stage(workspace, run)["metrics"]
    assert metrics["meanReward"] > metrics["baselineMeanReward"] + 1.0
    checkpoint = workspace / "p" / "rl-lora" / "attempt-1" / "checkpoints" / "checkpoint-60"
    assert (checkpoint / "adapter_model.safetensors").is_file() and not (checkpoint / "model.safetensors").exists()
    model = workspace / "p" / "rl-lora" / "model"  # merged (lora.save default): the next stage needs no peft
    assert (model / "model.safetensors").is_file() and not list(model.glob("adapter_*"))


def test_rlhf_resumes_from_its_checkpoint(example, workspace):
    first = rlhf_run(workspace, example, "rl", training={"maxSteps": 4, "saveSteps": 2, "loggingSteps": 2}, rl={"evalPrompts": 8})
    assert run_stage(workspace, first)["steps"] == 4
    second = rlhf_run(workspace, example, "rl", training={"maxSteps": 6, "saveSteps": 2, "loggingSteps": 2}, rl={"evalPrompts": 8},
                      attempt=2)
    result = run_stage(workspace, second)
    assert result["steps"] == 6 and "meanReward" in result["metrics"]
    assert read_json(workspace / "p" / "rl" / "progress.json")["resumedFrom"]["step"] == 4
    assert (workspace / "p" / "rl" / "attempt-2" / "checkpoints" / "checkpoint-6" / CHECKPOINT_MARKER).is_file()

    # Killed after its last checkpoint but before result.json: a rerun loads it and still reports kl.
    third = rlhf_run(workspace, example, "rl", training={"maxSteps": 6, "saveSteps": 2, "loggingSteps": 2}, rl={"evalPrompts": 8},
                     attempt=3)
    result = run_stage(workspace, third)
    assert result["steps"] == 6 and {"meanReward", "baselineMeanReward", "kl"} <= set(result["metrics"])


def test_batch_must_hold_whole_groups(example, workspace):
    from refinery_trainer import cli
    from .conftest import write_config

    run = rlhf_run(workspace, example, training={"batchSize": 6}, rl={"numGenerations": 4})
    assert cli.main(["run", "--config", str(write_config(workspace / "bad.yaml", run))]) == 1
    progress = read_json(workspace / "p" / "rlhf" / "progress.json")
    assert progress["phase"] == "Failed" and "numGenerations" in progress["message"]
