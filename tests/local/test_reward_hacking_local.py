"""A planted case of over-optimisation, end to end in local mode: a reward stage taught to prefer a
wrong answer (" quack" to every right one — neither empty nor truncated) is the policy's judge,
an exactMatch audit watches. The pipeline says RewardOveroptimized with its figures and what it
did not check, keeps the audit's best model and saves it as the stage's, and holds the export back."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from tests.trainer.example_task import DATA, example_sft, model_dir

from .conftest import refinery

pytestmark = pytest.mark.slow
WRONG = " quack"


def planted_pipeline(folder, sft_model) -> dict:
    rows = [json.loads(line) for line in (DATA / "preferences.jsonl").read_text().splitlines()]
    (folder / "quack.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"], "chosen": WRONG, "rejected": r["chosen"]}) + "\n"
                                               for r in rows[:800] if r["chosen"] != WRONG))
    (folder / "refs.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"], "reference": r["chosen"]}) + "\n"
                                              for r in rows[:1000]))
    small = {"learningRate": 3e-3, "batchSize": 32, "seqLen": 64, "loggingSteps": 10}
    return {"apiVersion": "refinery.dev/v1alpha1", "kind": "TrainingPipeline", "metadata": {"name": "planted"}, "spec": {
        "storage": {"claim": {"size": "1Gi"}},
        "stages": [
            # The example's sft policy, taken as it is (one more step of sft: a stage needs a dataset).
            {"name": "sft", "type": "sft", "model": {"path": str(sft_model)}, "data": {"path": str(DATA / "sft.jsonl")},
             "training": {**small, "maxSteps": 1, "saveSteps": 1, "learningRate": 1e-6}},
            {"name": "judge", "type": "reward", "from": "sft", "data": {"path": "quack.jsonl"},
             "training": {**small, "maxSteps": 60, "saveSteps": 60}},
            {"name": "rlhf", "type": "rlhf", "from": "sft",
             "data": {"path": "refs.jsonl", "evalPath": str(DATA / "answers_eval.jsonl")},
             "rl": {"rewards": [{"model": "judge"}], "audit": [{"exactMatch": {}}], "auditSteps": 10,
                    "numGenerations": 4, "maxCompletionLength": 4, "evalPrompts": 128},
             "training": {**small, "maxSteps": 40, "saveSteps": 40, "learningRate": 1e-3}},
        ],
        "export": {"stage": "rlhf", "to": "exports/planted"},
    }}


def test_a_planted_judge_is_caught_and_the_export_held_back(tmp_path, tmp_path_factory):
    sft = model_dir(example_sft(tmp_path_factory.getbasetemp() / "example"), "sft")
    manifest = tmp_path / "planted.yaml"
    manifest.write_text(yaml.safe_dump(planted_pipeline(tmp_path, sft)))
    proc = refinery("run", str(manifest), "--workdir", str(tmp_path / "runs"), "--quiet",
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=900)
    print(out)
    assert proc.returncode != 0
    status = json.loads((tmp_path / "runs" / "planted" / "status.json").read_text())
    conditions = {c["type"]: c for c in status["conditions"]}
    hacking = conditions["RewardHacking"]
    assert (hacking["status"], hacking["reason"]) == ("True", "RewardOveroptimized")
    assert "the audit fell" in hacking["message"] and "held-out exact match fell" in hacking["message"]
    assert "did not check KL (no rl.maxKl)" in hacking["message"]  # and says what it could not check
    failed = conditions["Failed"]
    assert status["phase"] == "Failed" and failed["reason"] == "GateNotMet" and "export held back" in failed["message"]
    stages = {s["name"]: s for s in status["stages"]}
    assert stages["rlhf"]["phase"] == "Succeeded" and stages["export"]["phase"] == "Pending"
    assert not (tmp_path / "runs" / "exports" / "planted").exists()
    # The audit's best model is kept and named, and (rl.selectBy defaults to audit) is the stage's model.
    metrics = stages["rlhf"]["metrics"]
    best = json.loads((tmp_path / "runs" / "planted" / "rlhf" / "audit-best" / "audit-best.json").read_text())
    assert metrics["selectedStep"] == best["step"] == metrics["bestAuditStep"]
    assert metrics["meanReward"] > metrics["baselineMeanReward"]  # the judge is pleased ...
    print({k: v for k, v in sorted(metrics.items()) if not k.startswith(("rewards/", "heldOutRewards/"))})
    assert metrics["heldOutExactMatch"] < metrics["baselineHeldOutExactMatch"]  # ... the answers are worse
    assert metrics["rewardOveroptimized"] == metrics["groundTruthFell"] == 1.0
    assert metrics["completionsCollapsed"] == 0.0  # neither empty nor truncated: the collapse detector saw nothing
    assert "pipeline Failed" in out
