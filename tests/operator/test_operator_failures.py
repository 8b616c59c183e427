"""Failure classes, back-off, suspend and Events through the real kopf operator (kmock + test
kubelet + the torch-free fake stage)."""

from __future__ import annotations

import copy

import pytest

from refinery.core.accounting import seconds_between
from refinery_operator.k8s import PIPELINES
from tests.builders import chat_pipeline, make_pipeline

from .conftest import NAMESPACE, create_pipeline, stored, stored_all, wait_for
from .test_operator_fake_stage import PIPELINES_KEY, phase, stage_status

pytestmark = pytest.mark.timeout(150)


@pytest.fixture(autouse=True)
def fake_trainer(kubelet):
    from .test_operator_fake_stage import FAKE_STAGE

    kubelet.command_map["refinery-train"] = FAKE_STAGE


def one_stage(name, max_steps=40, save_steps=4, **stage):
    manifest = make_pipeline(name).stage("pretrain", "pretrain", **stage).manifest()
    manifest["spec"]["stages"][0]["training"] = {"maxSteps": max_steps, "saveSteps": save_steps}
    return manifest


def status_of(emulator, name):
    return (stored(emulator, PIPELINES_KEY, name) or {}).get("status") or {}


def events_of(emulator, name):
    return [(e["type"], e["reason"], e["message"]) for e in stored_all(emulator, "v1/events").values()
            if e["involvedObject"]["name"] == name and e.get("source", {}).get("component") == "refinery-operator"]


async def test_evicted_pod_resumes_without_spending_the_application_budget(emulator, cluster, start_operator, kubelet):
    retries = {"application": 0, "infrastructure": 2, "backoffSeconds": 1}
    async with start_operator():
        await create_pipeline(cluster, one_stage("evict", retries=retries))
        await create_pipeline(cluster, one_stage("steady", retries=retries))  # the same stage, never interrupted
        await wait_for(lambda: (status_of(emulator, "evict").get("checkpointStep") or 0) >= 8, 30, what="a checkpoint")
        await kubelet.evict("evict-pretrain-1")
        await wait_for(lambda: all(phase(emulator, n) == "Succeeded" for n in ("evict", "steady")), 60, what="both to finish")
        await wait_for(lambda: "PipelineSucceeded" in [r for _, r, _ in events_of(emulator, "evict")], 5, what="the last Event")

    (evicted,) = status_of(emulator, "evict")["stages"]
    (steady,) = status_of(emulator, "steady")["stages"]
    # A disruption, not a failure: neither the application nor the infrastructure budget is spent.
    assert evicted["attempt"] == 2 and evicted["restartsByClass"] == {"application": 0, "infrastructure": 0, "disruption": 1}
    assert evicted["lastFailure"]["class"] == "Disruption" and evicted["lastFailure"]["reason"] in ("Disrupted", "Evicted")
    assert "evict" in evicted["lastFailure"]["message"].lower()
    assert evicted["resumedFrom"]["step"] >= 8  # attempt 2 started from attempt 1's checkpoint
    # The resumed stage ends on the same step as an uninterrupted run, and lost only the work since its checkpoint.
    assert evicted["step"] == steady["step"] == 40 and evicted["lastCheckpoint"]["step"] == steady["lastCheckpoint"]["step"] == 40
    assert evicted["gpuSeconds"] > 0 and evicted["lostGpuSeconds"] <= evicted["gpuSeconds"]
    assert steady["restarts"] == 0 and steady["lostGpuSeconds"] == 0
    # No back-off after a disruption: attempt 2 started as soon as attempt 1's pod was gone.
    jobs = stored_all(emulator, "batch/v1/jobs")
    failed_at = next(c["lastTransitionTime"] for c in jobs["evict-pretrain-1"]["status"]["conditions"] if c["type"] == "Failed")
    assert jobs["evict-pretrain-2"]["status"]["startTime"] >= failed_at
    reasons = [r for _, r, _ in events_of(emulator, "evict")]
    for reason in ("StageStarted", "CheckpointSaved", "AttemptDisrupted", "StageRetried", "StageSucceeded", "PipelineSucceeded"):
        assert reason in reasons, reasons
    assert "AttemptFailed" not in reasons


async def test_application_failures_spend_their_budget_then_fail_the_pipeline(emulator, cluster, start_operator, kubelet):
    manifest = one_stage("nan", data={"path": "data/nan-loss.jsonl"}, retries={"application": 1, "backoffSeconds": 1})
    async with start_operator():
        await create_pipeline(cluster, manifest)
        await wait_for(lambda: phase(emulator, "nan") == "Failed", 40, what="the pipeline to fail")
        await wait_for(lambda: [r for _, r, _ in events_of(emulator, "nan")].count("AttemptFailed") == 2, 5, what="Events")

    status = status_of(emulator, "nan")
    (stage,) = status["stages"]
    assert stage["attempt"] == 2 and stage["restartsByClass"] == {"application": 1, "infrastructure": 0, "disruption": 0}
    assert stage["lastFailure"] == {"class": "Application", "reason": "NanLoss", "attempt": 2,
                                    "message": "loss became NaN at step 3: lower training.learningRate or check the data"}
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and "lower training.learningRate" in failed["message"]
    assert "application retry budget (1) is spent" in stage["message"]
    assert sorted(stored_all(emulator, "batch/v1/jobs")) == ["nan-pretrain-1", "nan-pretrain-2", "nan-sources-1-fetch"]
    assert [r for _, r, _ in events_of(emulator, "nan")].count("AttemptFailed") == 2


async def test_suspend_saves_a_checkpoint_and_resumes_from_it(emulator, cluster, start_operator, kubelet):
    async with start_operator():
        # One GPU: the kubelet enforces no requests, and gpuSeconds must count both segments.
        await create_pipeline(cluster, one_stage("pause", max_steps=60, save_steps=50, resources={"gpus": 1}))
        await wait_for(lambda: (status_of(emulator, "pause").get("stages") or [{}])[0].get("step", 0) >= 5, 30, what="training")
        await cluster.request("PATCH", PIPELINES.path(NAMESPACE, "pause"), body={"spec": {"suspend": True}},
                              content_type="application/merge-patch+json")
        await wait_for(lambda: stage_status(emulator, "pause", "pretrain", phase="Suspended"), 30, what="Suspended")
        suspended = copy.deepcopy(status_of(emulator, "pause"))
        saved = suspended["stages"][0]["lastCheckpoint"]["step"]
        await cluster.request("PATCH", PIPELINES.path(NAMESPACE, "pause"), body={"spec": {"suspend": False}},
                              content_type="application/merge-patch+json")
        await wait_for(lambda: phase(emulator, "pause") == "Succeeded", 40, what="the pipeline to finish")
        await wait_for(lambda: "Resumed" in [r for _, r, _ in events_of(emulator, "pause")], 5, what="the Resumed Event")

    assert suspended["phase"] == "Suspended"
    assert next(c for c in suspended["conditions"] if c["type"] == "Suspended")["status"] == "True"
    assert 5 <= saved < 50  # saved on SIGTERM, not at a saveSteps boundary
    (stage,) = status_of(emulator, "pause")["stages"]
    assert stage["attempt"] == 1 and stage["restarts"] == 0 and stage.get("lastFailure") is None  # no budget spent
    # GPU time: the part before the suspension (kept on the Job, as its startTime restarted) plus the part after.
    job = stored(emulator, "batch/v1/jobs", "pause-pretrain-1")
    held = float(job["metadata"]["annotations"]["refinery.dev/held-seconds"])
    assert held > 0 and suspended["stages"][0]["gpuSeconds"] <= held + 1.0
    assert stage["gpuSeconds"] >= held + seconds_between(job["status"]["startTime"], job["status"]["completionTime"]) - 1.0
    assert stage["resumedFrom"]["step"] == saved and stage["step"] == 60
    # The same Job, resumed (suspending changed the spec, but nothing new started: no second inputs check).
    assert list(stored_all(emulator, "batch/v1/jobs")) == ["pause-sources-1-fetch", "pause-pretrain-1"]
    assert next(c for c in status_of(emulator, "pause")["conditions"] if c["type"] == "Suspended")["status"] == "False"
    reasons = [r for _, r, _ in events_of(emulator, "pause")]
    assert "Suspended" in reasons and "Resumed" in reasons


async def test_rerun_annotation_and_gate_through_the_operator(emulator, cluster, start_operator, kubelet):
    from refinery_operator import metrics

    before = {h: sum(s.value for s in next(iter(h.collect())).samples if s.name.endswith("_count"))
              for h in (metrics.OPERATOR.checkpoint_latency, metrics.OPERATOR.next_job_latency)}
    manifest = make_pipeline("again").stage("pretrain", "pretrain").stage(
        "sft", "sft", from_="pretrain", gate={"metric": "evalLoss", "operator": "<=", "value": 1.0}).stage(
        "dpo", "sft", from_="sft").manifest()
    for stage in manifest["spec"]["stages"]:
        stage["training"] = {"maxSteps": 6, "saveSteps": 2}
    async with start_operator():
        await create_pipeline(cluster, manifest)
        await wait_for(lambda: phase(emulator, "again") == "Succeeded", 40, what="the first run")
        await cluster.request("PATCH", PIPELINES.path(NAMESPACE, "again"), content_type="application/merge-patch+json",
                              body={"metadata": {"annotations": {"refinery.dev/rerun-from": "sft"}}})
        await wait_for(lambda: "again-dpo-2" in stored_all(emulator, "batch/v1/jobs"), 30, what="the re-run")
        await wait_for(lambda: phase(emulator, "again") == "Succeeded" and status_of(emulator, "again")["stages"][2]["run"] == 1,
                       30, what="the re-run to finish")

    status = status_of(emulator, "again")
    assert status["rerunRequest"] == "sft"
    assert sorted(stored_all(emulator, "batch/v1/jobs")) == ["again-dpo-1", "again-dpo-2", "again-pretrain-1",
                                                              "again-sft-1", "again-sft-2", "again-sources-1-fetch"]
    pretrain, sft, dpo = status["stages"]
    assert (pretrain["run"], sft["run"], dpo["run"]) == (0, 1, 1)
    assert sft["output"].endswith("/again/sft/reruns/1/model") and sft["inputs"]["model"] == pretrain["output"]
    assert dpo["inputs"]["model"] == sft["output"] and sft["restarts"] == 0  # a re-run is not a restart
    assert "resumedFrom" not in sft  # a fresh run in its own folder: nothing of the replaced run resumed
    after = {h: sum(s.value for s in next(iter(h.collect())).samples if s.name.endswith("_count"))
             for h in (metrics.OPERATOR.checkpoint_latency, metrics.OPERATOR.next_job_latency)}
    assert all(after[h] > before[h] for h in after)  # both latency histograms are fed by the operator


async def test_a_gate_that_fails_stops_the_pipeline_with_gate_not_met(emulator, cluster, start_operator, kubelet):
    manifest = make_pipeline("gated").stage("pretrain", "pretrain", gate={"metric": "evalLoss", "operator": "<", "value": 0.01}) \
        .stage("sft", "sft", from_="pretrain").manifest()
    manifest["spec"]["stages"][0]["training"] = {"maxSteps": 6, "saveSteps": 2}
    async with start_operator():
        await create_pipeline(cluster, manifest)
        await wait_for(lambda: phase(emulator, "gated") == "Failed", 30, what="the gate to fail the pipeline")
        await wait_for(lambda: "GateNotMet" in [r for _, r, _ in events_of(emulator, "gated")], 5, what="the Event")

    failed = next(c for c in status_of(emulator, "gated")["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "GateNotMet" and "gate evalLoss < 0.01 not met: evalLoss = 0.25" in failed["message"]
    assert sorted(stored_all(emulator, "batch/v1/jobs")) == ["gated-pretrain-1", "gated-sources-1-fetch"]  # sft never started


async def test_an_eval_judged_by_the_reward_model_rlhf_was_optimised_against_warns_circular_judge(
        emulator, cluster, start_operator, kubelet):
    """Known from the spec: the Warning condition and Event come before any stage ran, and the
    stages still run."""
    manifest = chat_pipeline("judged").manifest()
    manifest["spec"]["stages"].append({"name": "eval", "type": "eval", "eval": {"models": ["sft", "rlhf"], "generate": {
        "path": "data/answers_eval.jsonl", "rewardModel": "reward", "baseline": "sft"}}})
    for stage in manifest["spec"]["stages"][:4]:  # the eval stage trains nothing
        stage["training"] = {"maxSteps": 4, "saveSteps": 2}
    async with start_operator():
        await create_pipeline(cluster, manifest)
        await wait_for(lambda: "CircularJudge" in [r for _, r, _ in events_of(emulator, "judged")], 15, what="the Event")
        first = next(c for c in status_of(emulator, "judged")["conditions"] if c["type"] == "CircularJudge")
        assert not any(s.get("phase") == "Succeeded" for s in status_of(emulator, "judged").get("stages", []))
        # A warning, not a failure: the stages run.
        await wait_for(lambda: stage_status(emulator, "judged", "pretrain", phase="Succeeded"), 30, what="a stage to succeed")

    condition = next(c for c in status_of(emulator, "judged")["conditions"] if c["type"] == "CircularJudge")
    assert (condition["status"], condition["reason"]) == ("True", "CircularJudge") and condition == first
    assert "eval stage 'eval' judges 'rlhf' with reward model 'reward'" in condition["message"]
    assert "rlhf.meanReward and rlhf.winRate" in condition["message"] and "not evidence" in condition["message"]
    warnings = [(t, m) for t, r, m in events_of(emulator, "judged") if r == "CircularJudge"]
    assert warnings == [("Warning", condition["message"])]  # once, not on every reconcile
