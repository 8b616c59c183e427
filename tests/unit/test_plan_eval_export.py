"""The planner with an eval stage and spec.export: the eval stage starts once every model it
scores (and its judge) exists and gets their paths; the export runs last, after every stage and
gate; a failed eval gate stops it with GateNotMet naming the metric and both values; and the
RewardHacking warning follows what an rlhf stage reports."""

from __future__ import annotations

import pytest

from refinery.api.run import ProgressRecord
from refinery.api.v1alpha1 import TrainingPipeline
from refinery.core.conditions import get_condition
from refinery.core.events import pipeline_events
from refinery.core.stage_run import build_stage_run
from tests.builders import chat_pipeline

from .planning import ROOT, ok, run

EVAL = {"name": "eval", "type": "eval",
        "eval": {"models": ["sft", "rlhf"],
                 "generate": {"path": "data/answers_eval.jsonl", "rewardModel": "reward", "baseline": "sft"}},
        "gate": {"metric": "rlhf.exactMatch", "operator": ">=", "valueFrom": "sft.exactMatch"}}


def evaluated(export: bool = True) -> TrainingPipeline:
    manifest = chat_pipeline().manifest()
    manifest["spec"]["stages"].append(EVAL)
    if export:
        manifest["spec"]["export"] = {"stage": "rlhf", "to": "s3://models/tiny-chat"}
    return TrainingPipeline.model_validate(manifest)


TRAINED = {"pretrain": ok(), "sft": ok(), "reward": ok(), "rlhf": ok()}


def test_the_eval_stage_waits_for_every_model_it_scores():
    assert [l.stage for l in run(evaluated(), {"pretrain": ok(), "sft": ok(), "reward": ok()}).launches] == ["rlhf"]
    launch = next(iter(run(evaluated(), TRAINED).launches))
    assert launch.stage == "eval"
    assert launch.inputs.models == {n: f"{ROOT}/{n}/model" for n in ("sft", "rlhf", "reward")}
    assert launch.inputs.reward_model == f"{ROOT}/reward/model"


def eval_done(metrics: dict[str, float]):
    record = ProgressRecord(phase="Succeeded", metrics=metrics)
    return run(evaluated(), {**TRAINED, "eval": ok()}, {"eval": record})


def test_the_export_runs_last_when_the_gate_holds():
    result = eval_done({"sft.exactMatch": 0.64, "rlhf.exactMatch": 1.0})
    assert [l.stage for l in result.launches] == ["export"]
    launch = result.launches[0]
    assert launch.inputs.model == f"{ROOT}/rlhf/model"
    assert set(launch.inputs.models) == {"pretrain", "sft", "reward", "rlhf", "eval"}  # the model card's lineage
    stage_run = build_stage_run(evaluated(), launch, ROOT, "/workspace", None)
    assert stage_run.pipeline_spec["export"]["to"] == "s3://models/tiny-chat" and stage_run.volume_root == "/workspace"
    assert [s.name for s in result.status.stages][-1] == "export"


def test_a_failed_eval_gate_stops_the_export_with_gate_not_met():
    result = eval_done({"sft.exactMatch": 0.92, "rlhf.exactMatch": 0.0})
    assert result.launches == ()
    assert result.status.phase == "Failed"
    failed = get_condition(result.status.conditions, "Failed")
    assert (failed.status, failed.reason) == ("True", "GateNotMet")
    words = "gate rlhf.exactMatch >= sft.exactMatch not met: rlhf.exactMatch = 0, sft.exactMatch = 0.92"
    assert words in failed.message and words in result.status.stage("eval").message
    assert result.status.stage("export").phase == "Pending"
    assert any(e.reason == "GateNotMet" and words in e.message for e in pipeline_events(None, result.status))


def test_a_gate_on_a_metric_the_eval_did_not_report_names_it():
    result = eval_done({"sft.exactMatch": 0.5})
    assert "did not report rlhf.exactMatch" in get_condition(result.status.conditions, "Failed").message


@pytest.mark.parametrize(("metrics", "reason"), [
    ({"completionsCollapsed": 1.0, "trainReward": 4.8, "emptyFraction": 1.0}, "CompletionsCollapsed"),
    ({"completionsCollapsed": 0.0, "klExceeded": 1.0, "kl": 3.2}, "KlExceeded"),
])
def test_reward_hacking_raises_a_warning_condition_and_an_event(metrics, reason):
    manifest = chat_pipeline().manifest()
    manifest["spec"]["stages"][3]["rl"] = {"maxKl": 1.0}
    pipeline = TrainingPipeline.model_validate(manifest)
    running = run(pipeline, {"pretrain": ok(), "sft": ok(), "reward": ok()},
                  {"rlhf": ProgressRecord(phase="Running", metrics={"completionsCollapsed": 0.0, "trainReward": 1.0})})
    hacked = run(pipeline.model_copy(update={"status": running.status}), {"pretrain": ok(), "sft": ok(), "reward": ok()},
                 {"rlhf": ProgressRecord(phase="Running", metrics=metrics)})
    before = get_condition(running.status.conditions, "RewardHacking")
    after = get_condition(hacked.status.conditions, "RewardHacking")
    assert before.status == "False"
    assert (after.status, after.reason) == ("True", reason) and "'rlhf'" in after.message
    events = pipeline_events(running.status, hacked.status)
    assert [e.type for e in events if e.reason == "RewardHacking"] == ["Warning"]


@pytest.mark.parametrize(("metrics", "reason", "figure"), [
    ({"rewardOveroptimized": 1.0, "baselineAuditScore": 2.1, "auditScore": -1.4, "bestAuditStep": 20.0},
     "RewardOveroptimized", "auditScore -1.4"),
    ({"groundTruthFell": 1.0, "baselineHeldOutExactMatch": 0.77, "heldOutExactMatch": 0.04}, "GroundTruthFell",
     "heldOutExactMatch 0.04"),
    ({"completionsDegenerate": 1.0, "baselineHeldOutDistinct": 9.0, "heldOutDistinct": 1.0}, "CompletionsDegenerate",
     "heldOutDistinct 1"),
])
def test_each_verdict_is_its_own_reason_with_its_figures(metrics, reason, figure):
    hacked = run(TrainingPipeline.model_validate(chat_pipeline().manifest()), {"pretrain": ok(), "sft": ok(), "reward": ok()},
                 {"rlhf": ProgressRecord(phase="Running", metrics={"meanReward": 5.2, "baselineMeanReward": 3.9, **metrics})})
    condition = get_condition(hacked.status.conditions, "RewardHacking")
    assert (condition.status, condition.reason) == ("True", reason) and figure in condition.message


def test_the_all_clear_says_what_was_not_checked():
    # No rl.maxKl, no rl.audit, no references (no heldOutExactMatch reported): nothing implies those were checked.
    clear = run(TrainingPipeline.model_validate(chat_pipeline().manifest()), {"pretrain": ok(), "sft": ok(), "reward": ok()},
                {"rlhf": ProgressRecord(phase="Running", metrics={"meanReward": 5.2, "completionsCollapsed": 0.0})})
    condition = get_condition(clear.status.conditions, "RewardHacking")
    assert (condition.status, condition.reason) == ("False", "NoRewardHacking")
    assert "checked: collapsed and alike completions)" in condition.message
    for unchecked in ("KL (no rl.maxKl)", "no rl.audit", "ground truth (the prompts have no reference column)"):
        assert unchecked in condition.message
    # A hacked stage's warning says the same of what it could not check.
    hacked = run(TrainingPipeline.model_validate(chat_pipeline().manifest()), {"pretrain": ok(), "sft": ok(), "reward": ok()},
                 {"rlhf": ProgressRecord(phase="Running", metrics={"completionsDegenerate": 1.0})})
    assert "did not check KL (no rl.maxKl)" in get_condition(hacked.status.conditions, "RewardHacking").message


def test_an_export_waits_for_no_reward_hacking_unless_allowed():
    hacked = {"sft.exactMatch": 0.5, "rlhf.exactMatch": 0.9}
    record = ProgressRecord(phase="Succeeded", metrics={"completionsDegenerate": 1.0, "heldOutDistinct": 1.0})
    result = run(evaluated(), {**TRAINED, "eval": ok()}, {"eval": ProgressRecord(phase="Succeeded", metrics=hacked),
                                                           "rlhf": record})
    assert result.launches == () and result.status.phase == "Failed"
    failed = get_condition(result.status.conditions, "Failed")
    assert failed.reason == "GateNotMet" and "export held back" in failed.message
    assert "allowRewardHacking" in failed.message and result.status.stage("export").phase == "Pending"
    allowed = evaluated()
    allowed.spec.export.allow_reward_hacking = True
    result = run(allowed, {**TRAINED, "eval": ok()}, {"eval": ProgressRecord(phase="Succeeded", metrics=hacked),
                                                       "rlhf": record})
    assert [l.stage for l in result.launches] == ["export"]


def test_eval_scores_and_hacking_signals_are_prometheus_gauges():
    from refinery.api.v1alpha1 import StageStatus
    from refinery_operator.metrics import StageSnapshot, stage_samples

    status = StageStatus(name="eval", metrics={"rlhf.exactMatch": 1.0, "sft.animal_sounds/acc": 0.6})
    samples = {(n, tuple(l)): v for n, l, v in stage_samples(("ns", "p", "eval"), StageSnapshot(status), 0.0)}
    assert samples[("refinery_eval_score", ("ns", "p", "eval", "rlhf", "exactMatch"))] == 1.0
    assert samples[("refinery_eval_score", ("ns", "p", "eval", "sft", "animal_sounds/acc"))] == 0.6
    rlhf = StageStatus(name="rlhf", metrics={"completionsCollapsed": 1.0, "meanReward": 4.8})
    samples = {(n, tuple(l)): v for n, l, v in stage_samples(("ns", "p", "rlhf"), StageSnapshot(rlhf), 0.0)}
    assert samples[("refinery_stage_reward_hacking", ("ns", "p", "rlhf", "completionsCollapsed"))] == 1.0


def test_the_export_job_gets_its_credentials_by_secret_reference():
    from refinery_operator.builders import build_stage_job

    pipeline = evaluated()
    export = pipeline.spec.export.model_copy(update={"credentials_secret": "model-store"})
    pipeline = pipeline.model_copy(update={"spec": pipeline.spec.model_copy(update={"export": export})})
    launch = eval_done({"sft.exactMatch": 0.5, "rlhf.exactMatch": 0.9}).launches[0]
    container = build_stage_job(pipeline, launch)["spec"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": "model-store"}} in container["envFrom"]
    assert all("value" not in e or "model-store" not in e["value"] for e in container.get("env", []))
    # Stages that train never see it.
    rlhf = next(l for l in run(evaluated(), {"pretrain": ok(), "sft": ok(), "reward": ok()}).launches)
    assert "envFrom" not in build_stage_job(pipeline, rlhf)["spec"]["template"]["spec"]["containers"][0]


def test_an_rlhf_stage_gets_every_reward_stage_its_rewards_and_audit_name():
    manifest = chat_pipeline().manifest()
    stages = manifest["spec"]["stages"]
    stages.insert(3, {**stages[2], "name": "audit-judge"})  # a second reward stage
    rlhf = stages[4]
    rlhf.pop("rewardModel")
    rlhf["rl"] = {"rewards": [{"model": "reward"}, {"exactMatch": {}}], "audit": [{"model": "audit-judge"}]}
    pipeline = TrainingPipeline.model_validate(manifest)
    assert pipeline.spec.stage("rlhf").dependencies == ["sft", "reward", "audit-judge"]
    waiting = run(pipeline, {"pretrain": ok(), "sft": ok(), "reward": ok()})
    assert [l.stage for l in waiting.launches] == ["audit-judge"]  # the audit's judge first: rlhf waits for it
    launch = run(pipeline, {"pretrain": ok(), "sft": ok(), "reward": ok(), "audit-judge": ok()}).launches[0]
    assert launch.stage == "rlhf" and launch.inputs.reward_model is None
    assert launch.inputs.models == {"reward": f"{ROOT}/reward/model", "audit-judge": f"{ROOT}/audit-judge/model"}
    assert build_stage_run(pipeline, launch, ROOT, "/workspace", None).models == launch.inputs.models
