"""The real job controller decides what the emulator's kubelet used to: the operator reads the
Job conditions kube-controller-manager writes from the test node's pod status.

- a trainer that exits 1 (NaN loss): backoffLimit 0 fails the Job (BackoffLimitExceeded), the
  operator spends the application budget, then fails the pipeline;
- a container killed like the OOM killer does (exit 137): the Job's podFailurePolicy rule fails it
  with reason PodFailurePolicy, the operator classes it as an infrastructure failure and the next
  attempt resumes from the checkpoint;
- `spec.suspend`: the operator suspends the Job, the job controller deletes its pod (SIGTERM: the
  stage saves a checkpoint), the Job shows Suspended; resumed, the same Job starts a new pod that
  resumes from that checkpoint.

Not here: an Indexed Job's pods (multi-node stages) rendezvous over the network, which this
control plane has none of (no CNI, no cluster DNS); the emulator's tests/operator/test_multi_node.py
covers them.
"""

from __future__ import annotations

import asyncio

import pytest

from refinery_operator.k8s import JOBS, MERGE_PATCH, PIPELINES
from tests.builders import make_pipeline

from .conftest import create_pipeline, get_pipeline, wait_until
from .test_least_privilege import finished

pytestmark = pytest.mark.timeout(240)


def one_stage(name: str, namespace: str, steps: int, **extra) -> dict:
    manifest = make_pipeline(name, namespace).stage("pretrain", "pretrain", **extra).manifest()
    manifest["spec"]["stages"][0].setdefault("training", {"maxSteps": steps, "saveSteps": 5})
    return manifest


async def stage_of(admin, namespace: str, name: str) -> dict:
    status = ((await get_pipeline(admin, namespace, name)) or {}).get("status") or {}
    return (status.get("stages") or [{}])[0]


async def start(chart_operator):
    operator = chart_operator()
    operator.start()
    await asyncio.to_thread(operator.wait_live)
    return operator


async def test_application_failure_spends_its_budget_then_fails(admin, namespace, node, chart_operator):
    operator = await start(chart_operator)
    await create_pipeline(admin, one_stage("nan", namespace, 20, data={"path": "data/nan-loss.jsonl"},
                                           retries={"application": 1, "backoffSeconds": 1}))
    status = await wait_until(lambda: finished(admin, namespace, "nan"), 90, "the pipeline to fail")
    assert status["phase"] == "Failed", (status, operator.log_tail())
    (stage,) = status["stages"]
    assert stage["attempt"] == 2 and stage["restartsByClass"] == {"application": 1, "infrastructure": 0, "disruption": 0}
    assert (stage["lastFailure"]["class"], stage["lastFailure"]["reason"]) == ("Application", "NanLoss")
    job = await admin.get(JOBS, namespace, "nan-pretrain-2")
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"  # written by the real job controller


async def test_oom_killed_container_is_an_infrastructure_failure_and_resumes(admin, namespace, node, chart_operator):
    operator = await start(chart_operator)
    await create_pipeline(admin, one_stage("oom", namespace, 120, retries={"application": 0, "infrastructure": 1,
                                                                           "backoffSeconds": 1}))

    async def checkpointed():
        return ((await stage_of(admin, namespace, "oom")).get("lastCheckpoint") or {}).get("step", 0) >= 10

    await wait_until(checkpointed, 60, "a checkpoint")
    node.oom_kill("oom-pretrain-1-")
    status = await wait_until(lambda: finished(admin, namespace, "oom"), 120, "the pipeline to finish")
    assert status["phase"] == "Succeeded", (status, operator.log_tail())
    (stage,) = status["stages"]
    assert stage["attempt"] == 2 and stage["restartsByClass"] == {"application": 0, "infrastructure": 1, "disruption": 0}
    assert stage["lastFailure"]["class"] == "Infrastructure", stage["lastFailure"]
    assert stage["resumedFrom"]["step"] >= 10 and stage["lastCheckpoint"]["step"] == 120
    job = await admin.get(JOBS, namespace, "oom-pretrain-1")
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PodFailurePolicy" and "137" in failed["message"], failed


async def test_suspend_and_resume_through_the_job_controller(admin, namespace, node, chart_operator):
    operator = await start(chart_operator)
    await create_pipeline(admin, one_stage("pause", namespace, 120, training={"maxSteps": 120, "saveSteps": 100}))

    async def training():
        return (await stage_of(admin, namespace, "pause")).get("step", 0) >= 10

    await wait_until(training, 60, "training")
    await admin.request("PATCH", PIPELINES.path(namespace, "pause"), body={"spec": {"suspend": True}}, content_type=MERGE_PATCH)

    async def suspended():
        stage = await stage_of(admin, namespace, "pause")
        return stage if stage.get("phase") == "Suspended" else None

    stage = await wait_until(suspended, 90, "the stage to be suspended")
    saved = stage["lastCheckpoint"]["step"]
    assert 10 <= saved < 100  # saved on SIGTERM, not at a saveSteps boundary
    job = await admin.get(JOBS, namespace, "pause-pretrain-1")
    assert job["spec"]["suspend"] is True
    assert any(c["type"] == "Suspended" and c["status"] == "True" for c in job["status"]["conditions"])
    await admin.request("PATCH", PIPELINES.path(namespace, "pause"), body={"spec": {"suspend": False}}, content_type=MERGE_PATCH)
    status = await wait_until(lambda: finished(admin, namespace, "pause"), 120, "the pipeline to finish")
    assert status["phase"] == "Succeeded", (status, operator.log_tail())
    (stage,) = status["stages"]
    assert stage["attempt"] == 1 and stage["restarts"] == 0 and stage["resumedFrom"]["step"] == saved
    pods = [p for p in node.started if p.startswith("pause-")]
    assert pods[0].startswith("pause-sources-1-fetch-") and all(p.startswith("pause-pretrain-1-") for p in pods[1:])
    # The inputs check, then the same Job's two pods: suspending and resuming made new generations of
    # the spec, but no stage started after them, so their inputs were not checked again.
    assert len(node.started) == 3, node.started
