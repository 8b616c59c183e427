"""Reward hacking made visible: a reward model trained to prefer empty answers (every pair's
chosen is empty) drives RLOO to answer nothing while its reward rises; the stage says so
(completionsCollapsed, the empty share), and with rl.stopOnHacking it stops with RewardHacking."""

from __future__ import annotations

import json

import pytest

from refinery_trainer import cli

from .conftest import read_json, write_config, write_jsonl
from .example_task import DATA, example_run, example_sft, model_dir, run_stage

pytestmark = pytest.mark.slow
# Sampled hot enough that an empty answer (EOS first: 0.02% of samples at temperature 1, 0.6% at 2) turns up.
RL = {"numGenerations": 8, "maxCompletionLength": 4, "beta": 0.05, "evalPrompts": 64, "temperature": 2.0}


@pytest.fixture(scope="module")
def hacked_judge(tmp_path_factory):
    """The example's sft model, and a reward model that learned to prefer an empty answer to the right one."""
    ws = example_sft(tmp_path_factory.getbasetemp() / "example")
    rows = [json.loads(line) for line in (DATA / "preferences.jsonl").read_text().splitlines()][:800]
    pairs = write_jsonl(ws / "empty-preferred.jsonl", [{"prompt": r["prompt"], "chosen": "", "rejected": r["chosen"]}
                                                        for r in rows])
    run = example_run(ws, "empty-judge", "reward", from_="sft", initModel=str(model_dir(ws, "sft")),
                      training={"maxSteps": 60, "saveSteps": 60})
    run["stage"]["data"] = {"path": str(pairs)}
    run_stage(ws, run)
    return ws


def hacking_run(ws, judge_ws, name: str, rl: dict | None = None, steps: int = 60) -> dict:
    return example_run(ws, name, "rlhf", from_="sft", stage={"rewardModel": "empty-judge", "rl": {**RL, **(rl or {})}},
                       initModel=str(model_dir(judge_ws, "sft")), rewardModel=str(model_dir(judge_ws, "empty-judge")),
                       training={"maxSteps": steps, "saveSteps": steps, "loggingSteps": 5, "learningRate": 3e-3})


def test_a_reward_model_that_prefers_empty_answers_is_flagged(hacked_judge, workspace):
    # 120 steps: the collapse is a tipping point (a few empty samples, rewarded, then most of them), and
    # where it comes varies with the CPU's thread count; by 120 it has come on every setting tried.
    metrics = run_stage(workspace, hacking_run(workspace, hacked_judge, "hacked", steps=120))["metrics"]
    assert metrics["meanReward"] > metrics["baselineMeanReward"]  # the reward rose ...
    assert metrics["heldOutEmptyFraction"] >= 0.9  # ... while the policy learned to say nothing
    assert metrics["completionsCollapsed"] == 1.0
    # Live, while it trained: most sampled completions were empty by the end, and TRL's mean
    # completion length (EOS included: 1 is an empty answer) fell towards 1.
    assert metrics["emptyFraction"] > 0.5
    text = (workspace / "p" / "hacked" / "attempt-1" / "metrics.jsonl").read_text()
    lengths = [entry["completions/mean_length"] for entry in map(json.loads, text.splitlines()) if "completions/mean_length" in entry]
    assert lengths[-1] < 1.5 < lengths[0]


def test_stop_on_hacking_fails_the_stage_with_reward_hacking(hacked_judge, workspace):
    run = hacking_run(workspace, hacked_judge, "stopped", rl={"stopOnHacking": True}, steps=90)
    assert cli.main(["run", "--config", str(write_config(workspace / "stopped.yaml", run))]) == 1
    progress = read_json(workspace / "p" / "stopped" / "progress.json")
    assert progress["phase"] == "Failed" and progress["failureReason"] == "RewardHacking"
    assert "completions collapsed" in progress["message"] and progress["metrics"]["completionsCollapsed"] == 1.0
    assert progress["step"] < 90  # stopped early
    assert not (workspace / "p" / "stopped" / "model").exists()
