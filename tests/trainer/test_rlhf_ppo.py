"""rlhf with `rl.algorithm: ppo` on the example task: PPO with a critic raises the held-out reward of
the SFT policy (and its share of right answers), checkpoints policy, critic and optimiser with
the shared markers, and a resumed run continues exactly where the killed one stopped."""

from __future__ import annotations

import math

import pytest

from refinery.api.run import CHECKPOINT_MARKER

from .conftest import read_json
from .example_task import accuracy, eval_prompts, example_models, example_run, model_dir, run_stage

pytestmark = pytest.mark.slow

RL = {"algorithm": "ppo", "numGenerations": 4, "maxCompletionLength": 4, "beta": 0.05, "evalPrompts": 128}


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    return example_models(tmp_path_factory.getbasetemp() / "example")


def ppo_run(ws, example, name="ppo", rl=None, **fields):
    return example_run(ws, name, "rlhf", from_="sft", stage={"rewardModel": "reward", "rl": {**RL, **(rl or {})}},
                       initModel=str(model_dir(example, "sft")), rewardModel=str(model_dir(example, "reward")), **fields)


def test_ppo_raises_reward_and_accuracy(example, workspace):
    # PPO takes ppoEpochs (4) Adam steps per rollout: at the rloo tests' 1e-3 it overshoots on this task.
    run = ppo_run(workspace, example, training={"maxSteps": 30, "saveSteps": 15, "loggingSteps": 10, "learningRate": 3e-4})
    result = run_stage(workspace, run)
    metrics = result["metrics"]
    # Reward-model units; seeds move meanReward by ~0.3-0.4 at this budget (benchmarks/rl_algorithms.py).
    assert metrics["meanReward"] > metrics["baselineMeanReward"] + 2.0, metrics
    for name in ("kl", "valueLoss", "policyLoss", "trainReward", "trainLoss"):
        assert math.isfinite(metrics[name]), name
    assert 0 < metrics["kl"] < 2.0  # the KL penalty keeps the policy near the reference
    assert result["steps"] == 30

    prompts = eval_prompts()[:128]
    before, after = accuracy(model_dir(example, "sft"), prompts), accuracy(workspace / "p" / "ppo" / "model", prompts)
    assert after > before + 0.1, (before, after)

    # Checkpoints: policy at the top, critic in value/, optimiser state; marked complete and reported.
    stage_dir = workspace / "p" / "ppo"
    for step in (15, 30):
        path = stage_dir / "attempt-1" / "checkpoints" / f"checkpoint-{step}"
        assert read_json(path / CHECKPOINT_MARKER)["step"] == step
        assert {"model.safetensors", "ppo_state.pt", "trainer_state.json"} <= {p.name for p in path.iterdir()}
        assert (path / "value" / "model.safetensors").is_file()
    progress = read_json(stage_dir / "progress.json")
    assert progress["phase"] == "Succeeded" and progress["checkpoints"] == 2 and progress["lastCheckpoint"]["step"] == 30


def test_resumed_ppo_matches_an_uninterrupted_run(example, workspace):
    """Sampling is seeded per step and the optimiser, scheduler and beta are checkpointed, so a run
    that lost everything after its step-4 checkpoint ends, resumed, with the very same weights."""
    import shutil

    import torch
    from safetensors.torch import load_file

    run = lambda attempt: ppo_run(workspace, example, rl={"evalPrompts": 8, "targetKl": 0.5},  # noqa: E731 - adaptive beta
                                  training={"maxSteps": 6, "saveSteps": 2, "loggingSteps": 2}, attempt=attempt)
    stage_dir = workspace / "p" / "ppo"
    straight = run_stage(workspace, run(1))
    weights = load_file(stage_dir / "model" / "model.safetensors")
    # As if killed right after the step-4 checkpoint: its later checkpoint and outputs never existed.
    shutil.rmtree(stage_dir / "attempt-1" / "checkpoints" / "checkpoint-6")
    shutil.rmtree(stage_dir / "model")
    (stage_dir / "result.json").unlink()

    resumed = run_stage(workspace, run(2))
    assert resumed["steps"] == 6
    assert read_json(stage_dir / "progress.json")["resumedFrom"]["step"] == 4
    assert (stage_dir / "attempt-2" / "checkpoints" / "checkpoint-6" / "value" / "model.safetensors").is_file()
    assert resumed["metrics"]["beta"] == pytest.approx(straight["metrics"]["beta"]) and straight["metrics"]["beta"] != 0.05
    again = load_file(stage_dir / "model" / "model.safetensors")
    assert weights.keys() == again.keys() and all(torch.allclose(weights[k], again[k], atol=1e-6) for k in weights)
    base = load_file(model_dir(example, "sft") / "model.safetensors")
    assert any(not torch.allclose(weights[k], base[k]) for k in weights)  # and it did train

    # Killed after its final checkpoint, before result.json: a rerun loads it and reports the same figures.
    (stage_dir / "result.json").unlink()
    final = run_stage(workspace, run(3))
    assert final["steps"] == 6
    for name in ("meanReward", "kl", "valueLoss", "policyLoss", "beta"):
        assert final["metrics"][name] == pytest.approx(resumed["metrics"][name]), name


@pytest.mark.parametrize("edit", [
    lambda run: run["stage"].update(deepspeed={"zeroStage": 2}),
    lambda run: run["stage"]["training"].update(lora={"r": 8}),
])
def test_ppo_with_deepspeed_or_lora_is_refused_before_training(example, workspace, capsys, edit):
    """The API refuses it (CEL at admission, and the stage config here): no GPU time is spent to find out."""
    from refinery_trainer import cli

    from .conftest import write_config

    run = ppo_run(workspace, example, training={"maxSteps": 2})
    edit(run)
    assert cli.main(["run", "--config", str(write_config(workspace / "bad.yaml", run))]) == 2
    assert "rl.algorithm ppo runs in one process" in capsys.readouterr().err
    assert not (workspace / "p" / "ppo").exists()  # nothing started


def test_sigterm_saves_a_ppo_checkpoint_then_exits_143(example, workspace):
    """Eviction or preemption: the loop finishes its step, checkpoints it (marker included), stops."""
    import json
    import signal
    import subprocess
    import time

    from refinery_trainer.checkpoints import checkpoint_step, complete_checkpoints

    from .conftest import write_config
    from .test_resume import refinery_train

    run = ppo_run(workspace, example, rl={"evalPrompts": 8},
                  training={"maxSteps": 500, "saveSteps": 1000, "loggingSteps": 1, "learningRate": 3e-4})
    stage_dir, progress = workspace / "p" / "ppo", workspace / "p" / "ppo" / "progress.json"
    proc = subprocess.Popen(refinery_train(write_config(workspace / "ppo.yaml", run)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if progress.is_file() and (json.loads(progress.read_text() or "{}").get("step") or 0) >= 3:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr[-2000:]
    [checkpoint] = complete_checkpoints(stage_dir)  # the one SIGTERM asked for (saveSteps is 1000)
    assert 3 <= checkpoint_step(checkpoint) < 500
    assert (checkpoint / "value" / "model.safetensors").is_file()
    assert read_json(progress)["phase"] == "Failed" and read_json(progress)["failureReason"] == "Terminated"
