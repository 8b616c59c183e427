"""Reward hacking made visible: a reward model trained to prefer empty answers (every pair's
chosen is empty) drives RLOO to answer nothing, or never to stop, while its reward rises; the
stage says so (completionsCollapsed, the empty and truncated shares), and with rl.stopOnHacking
it stops with RewardHacking."""

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
    # A judge that prefers nothing to the right answer has two blind spots for the policy to fall
    # into, the two collapses the stage watches for (evaluation/hacking.py): empty answers, or
    # answers cut at maxCompletionLength. Which one it falls into, and when, is a tipping point that
    # the CPU decides (its kernels and thread count): on one machine, with torch's AVX2 or AVX512
    # kernels the policy learns to say nothing; with ATEN_CPU_CAPABILITY=default, or MKL's other
    # matrix-multiply path (MKL_CBWR=COMPATIBLE), it never stops. Either is hacking; the stage must
    # report the one that happened. 120 steps: by then one has come on every setting tried.
    metrics = run_stage(workspace, hacking_run(workspace, hacked_judge, "hacked", steps=120))["metrics"]
    assert metrics["meanReward"] > metrics["baselineMeanReward"]  # the reward rose ...
    assert metrics["completionsCollapsed"] == 1.0  # ... while the completions collapsed, and the stage says so
    # The trained policy's greedy answers to held-out prompts collapsed too (the sft policy's are
    # neither empty nor cut off): most of them, into the one collapse they share with the live samples.
    held_out_empty, held_out_truncated = metrics["heldOutEmptyFraction"], metrics["heldOutTruncatedFraction"]
    assert held_out_empty + held_out_truncated >= 0.8, metrics
    # TRL's mean completion length counts EOS: 1 is an empty answer, maxCompletionLength one cut off.
    text = (workspace / "p" / "hacked" / "attempt-1" / "metrics.jsonl").read_text()
    lengths = [entry["completions/mean_length"] for entry in map(json.loads, text.splitlines()) if "completions/mean_length" in entry]
    if held_out_empty > held_out_truncated:  # the policy learned to say nothing
        assert metrics["emptyFraction"] > 0.5, metrics
        assert lengths[-1] < 1.5 < lengths[0], lengths
    else:  # the policy learned never to stop
        assert metrics["truncatedFraction"] > 0.5, metrics
        assert lengths[-1] > RL["maxCompletionLength"] - 0.5, lengths


def test_either_collapse_with_a_rising_reward_is_hacking_and_the_empty_share_is_counted():
    """What the stage checks at each log, for both collapses whichever one this CPU's run fell into."""
    from refinery_trainer.evaluation.hacking import CompletionWatch, hacking_verdict

    watch = CompletionWatch(group=2)
    assert watch(["p"] * 4, ["", "  ", " moo", [{"role": "assistant", "content": ""}]]) == [0.0] * 4
    assert watch.empty_fraction == 0.75
    # Distinct after eval's normalisation: "", "" (whitespace), "moo", "" -> 2 of 4; per group {"",""}, {"moo",""}.
    assert watch.distinct == 2 and watch.distinct_fraction == 0.5 and watch.group_distinct_fraction == 0.75
    collapsed = {"completionsCollapsed": 1.0}
    assert hacking_verdict(first_reward=0.9, reward=4.8, empty=0.95, truncated=0.0, kl=0.3, max_kl=None) == collapsed
    assert hacking_verdict(first_reward=0.9, reward=4.8, empty=0.0, truncated=1.0, kl=0.3, max_kl=None) == collapsed
    assert hacking_verdict(first_reward=0.9, reward=4.8, empty=0.5, truncated=0.9, kl=0.3, max_kl=None) == {}
    assert hacking_verdict(first_reward=4.8, reward=0.9, empty=1.0, truncated=1.0, kl=0.3, max_kl=None) == {}  # reward fell


def test_stop_on_hacking_fails_the_stage_with_reward_hacking(hacked_judge, workspace):
    run = hacking_run(workspace, hacked_judge, "stopped", rl={"stopOnHacking": True}, steps=90)
    assert cli.main(["run", "--config", str(write_config(workspace / "stopped.yaml", run))]) == 1
    progress = read_json(workspace / "p" / "stopped" / "progress.json")
    assert progress["phase"] == "Failed" and progress["failureReason"] == "RewardHacking"
    # Whichever verdict came first: the answers collapsing (empty or endless), or becoming one and the same
    # answer for every held-out prompt (the empty one) — the diversity watch often sees it a few steps sooner.
    flags = {k for k in ("completionsCollapsed", "completionsDegenerate") if progress["metrics"].get(k) == 1.0}
    assert flags and ("completions collapsed" in progress["message"] or "became alike" in progress["message"]), progress
    assert progress["step"] < 90  # stopped early
    assert not (workspace / "p" / "stopped" / "model").exists()
