"""Ground truth for RL: verifier rewards raise held-out exact match with no reward stage (RLVR), and
a reward model planted to prefer a wrong answer — neither empty nor truncated, the case the
collapse detector cannot see — is caught by the audit, the references and the diversity watch,
stopped by rl.stopOnHacking, with the audit's best model kept and named. (The planted case run to
its end, with the export held back, is tests/local/test_reward_hacking_local.py.)"""

from __future__ import annotations

import json

import pytest

from refinery_trainer import cli

from .conftest import read_json, write_config, write_jsonl
from .example_task import DATA, example_run, example_sft, model_dir, run_stage

pytestmark = pytest.mark.slow
RL = {"algorithm": "rloo", "numGenerations": 4, "maxCompletionLength": 4, "beta": 0.05, "evalPrompts": 128}
WRONG = " quack"  # what the planted judge prefers to every right answer


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """The example's sft policy; prompts with references (the preferences' right answers; the held-out
    answers); and a reward model that learned to prefer " quack" to the right answer everywhere."""
    ws = example_sft(tmp_path_factory.getbasetemp() / "example")
    rows = [json.loads(line) for line in (DATA / "preferences.jsonl").read_text().splitlines()]
    write_jsonl(ws / "refs.jsonl", [{"prompt": r["prompt"], "reference": r["chosen"]} for r in rows[:1000]])
    pairs = [{"prompt": r["prompt"], "chosen": WRONG, "rejected": r["chosen"]} for r in rows[:800] if r["chosen"] != WRONG]
    judge = example_run(ws, "quack-judge", "reward", from_="sft", initModel=str(model_dir(ws, "sft")),
                        training={"maxSteps": 60, "saveSteps": 60})
    judge["stage"]["data"] = {"path": str(write_jsonl(ws / "quack-preferred.jsonl", pairs))}
    run_stage(ws, judge)
    return ws


def rl_run(ws, tasks, name: str, rl: dict, references: bool = True, judge: bool = False, steps: int = 100) -> dict:
    stage = {"rl": {**RL, **rl}, **({"rewardModel": "quack-judge"} if judge else {})}
    fields = {"rewardModel": str(model_dir(tasks, "quack-judge"))} if judge else {}
    run = example_run(ws, name, "rlhf", from_="sft", stage=stage, initModel=str(model_dir(tasks, "sft")),
                      training={"maxSteps": steps, "saveSteps": steps, "loggingSteps": 10}, **fields)
    if references:
        run["stage"]["data"] = {"path": str(tasks / "refs.jsonl"), "evalPath": str(DATA / "answers_eval.jsonl")}
    return run


def test_verifier_rewards_raise_held_out_exact_match_with_no_reward_stage(tasks, workspace):
    run = rl_run(workspace, tasks, "rlvr", {"rewards": [{"exactMatch": {}}, {"regex": {"pattern": r"^ \w+$"}, "weight": 0.1}]},
                 steps=60)
    metrics = run_stage(workspace, run)["metrics"]
    print({k: v for k, v in metrics.items() if "xact" in k or "eward" in k})
    # Ground truth, greedy, on held-out prompts the policy never trained on.
    assert metrics["heldOutExactMatch"] >= metrics["baselineHeldOutExactMatch"] + 0.15, metrics
    assert metrics["meanReward"] > metrics["baselineMeanReward"]
    # Each reward on its own, live and held out; none of the watches fired.
    assert {"rewards/exactMatch", "rewards/regex", "heldOutRewards/exactMatch", "heldOutRewards/regex"} <= metrics.keys()
    assert metrics["groundTruthFell"] == metrics["completionsDegenerate"] == metrics["completionsCollapsed"] == 0.0
    logged = [json.loads(line) for line in (workspace / "p" / "rlvr" / "attempt-1" / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/exactMatch/mean" in e for e in logged) and sum("held_out_exact_match" in e for e in logged) >= 6


def test_stop_on_hacking_stops_the_planted_run_and_saves_no_model(tasks, workspace):
    run = rl_run(workspace, tasks, "stopped", {"audit": [{"exactMatch": {}}], "auditSteps": 10, "stopOnHacking": True}, judge=True)
    assert cli.main(["run", "--config", str(write_config(workspace / "stopped.yaml", run))]) == 1
    progress = read_json(workspace / "p" / "stopped" / "progress.json")
    assert progress["phase"] == "Failed" and progress["failureReason"] == "RewardHacking"
    assert progress["step"] < 100 and not (workspace / "p" / "stopped" / "model").exists()
    assert "audit fell" in progress["message"] or "exact match fell" in progress["message"]
    assert "no model saved" in progress["message"] and "saved in" in progress["message"]
    assert f"{workspace}/p/stopped/audit-best" in progress["message"]  # the audit's best, named
    assert (workspace / "p" / "stopped" / "audit-best" / "model.safetensors").is_file()


def test_without_audit_or_references_the_diversity_watch_still_sees_it(tasks, workspace):
    metrics = run_stage(workspace, rl_run(workspace, tasks, "unaudited", {}, references=False, judge=True))["metrics"]
    assert metrics["completionsDegenerate"] == 1.0 and metrics["completionsCollapsed"] == 0.0
    # What could not be checked is not reported as checked.
    assert not {"rewardOveroptimized", "groundTruthFell", "klExceeded", "heldOutExactMatch"} & metrics.keys()


@pytest.mark.parametrize(("body", "says"), [
    ("def score(prompts, completions, references, **kw):\n    raise ValueError('no answer parsed')\n",
     "raised ValueError: no answer parsed"),
    ("def score(prompts, completions, references, **kw):\n    return 'good'\n", "returned str 'good'"),
])
def test_a_user_verifier_that_raises_or_returns_a_string_fails_the_stage(tasks, workspace, body, says):
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "verify.py").write_text(body)
    run = rl_run(workspace, tasks, "user", {"rewards": [{"python": {"path": str(workspace / "verify.py"), "function": "score"}}]},
                 steps=4)
    assert cli.main(["run", "--config", str(write_config(workspace / "user.yaml", run))]) == 1
    progress = read_json(workspace / "p" / "user" / "progress.json")
    assert progress["failureReason"] == "BadRewardFunction" and says in progress["message"], progress
    assert not (workspace / "p" / "user" / "model").exists()


@pytest.mark.parametrize("rl", [
    {"algorithm": "grpo", "lossType": "dr_grpo", "maskTruncatedCompletions": True},
    {"algorithm": "ppo"},  # the critic starts from the policy: there is no reward model to start it from
], ids=["grpo-dr_grpo", "ppo"])
def test_verifier_rewards_train_grpo_and_ppo_too(tasks, workspace, rl):
    run = rl_run(workspace, tasks, rl["algorithm"], {**rl, "rewards": [{"exactMatch": {}}]}, steps=40)
    metrics = run_stage(workspace, run)["metrics"]
    print(rl["algorithm"], {k: v for k, v in metrics.items() if "xact" in k or "eward" in k or "istinct" in k})
    assert metrics["heldOutExactMatch"] > metrics["baselineHeldOutExactMatch"], metrics
    # The same live watch on every algorithm: the completions' variety, batch by batch.
    assert 0 < metrics["distinctFraction"] <= 1 and metrics["completionsDegenerate"] == 0.0
