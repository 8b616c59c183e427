"""Kueue admission and the start timeout through the real kopf operator (kmock + test kubelet +
the torch-free fake stage).

Kueue is not emulated: the test plays it, admitting a Job the way Kueue does (a merge patch of
`spec.suspend: false` on the Job). A pod that never starts (ImagePullBackOff) is the kubelet's
`hold`; a foreground deletion is the kubelet's finalizer (see kubelet.py).
"""

from __future__ import annotations

import asyncio
import copy

import kmock
import pytest

from refinery_operator.k8s import JOBS, PIPELINES

from .conftest import NAMESPACE, create_pipeline, stored, stored_all, wait_for
from .test_operator_failures import events_of, one_stage, status_of
from .test_operator_fake_stage import FAKE_STAGE, PIPELINES_KEY, phase, stage_status

JOBS_KEY = "batch/v1/jobs"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
QUEUED = "queued: waiting for Kueue to admit it (LocalQueue 'gpu-queue')"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def fake_trainer(kubelet):
    kubelet.command_map["refinery-train"] = FAKE_STAGE


def queued(name, **stage):
    manifest = one_stage(name, **stage)
    manifest["spec"]["queueName"] = "gpu-queue"
    return manifest


def job_requests(emulator, job, action):
    """What was sent to one Job by anyone (operator, kubelet, test), oldest first."""
    return [r for r in list(emulator) if r.action == action and r.resource == kmock.resource(JOBS_KEY)
            and (r.name or ((r.data or {}).get("metadata") or {}).get("name")) == job]


def spec_patches(emulator, job):
    """PATCHes of the Job's spec (not of its status or finalizers)."""
    return [r.data["spec"] for r in job_requests(emulator, job, kmock.action.UPDATE)
            if not r.url.path.endswith("/status") and "spec" in (r.data or {})]


async def set_suspend(cluster, name, value):
    await cluster.request("PATCH", PIPELINES.path(NAMESPACE, name), body={"spec": {"suspend": value}},
                          content_type="application/merge-patch+json")


async def admit(cluster, job):
    """What Kueue does when the LocalQueue's ClusterQueue has quota for the Job."""
    await cluster.patch(JOBS, NAMESPACE, job, {"spec": {"suspend": False}})


async def test_kueue_job_is_created_suspended_and_runs_once_admitted(emulator, cluster, start_operator, kubelet):
    # A 1 s start timeout as well: the time a Job waits in the queue is not time its pod failed to start.
    manifest = queued("q", max_steps=6, save_steps=2, retries={"startTimeoutSeconds": 1, "infrastructure": 0})
    async with start_operator():
        await create_pipeline(cluster, manifest)
        waiting = await wait_for(lambda: stage_status(emulator, "q", "pretrain", message=QUEUED), 15, what="the queued message")
        await asyncio.sleep(1.5)  # several reconciles (each Job event wakes one); the operator must leave the Job alone
        held = copy.deepcopy(stored(emulator, JOBS_KEY, "q-pretrain-1"))
        still = copy.deepcopy(status_of(emulator, "q"))
        await admit(cluster, "q-pretrain-1")
        await wait_for(lambda: phase(emulator, "q") in ("Succeeded", "Failed"), 30, what="the pipeline to finish")

    assert held["spec"]["suspend"] is True and held["metadata"]["labels"][QUEUE_LABEL] == "gpu-queue"
    assert not (held.get("status") or {}).get("startTime")  # no pod while queued
    assert waiting["phase"] == "Running" and waiting["jobName"] == "q-pretrain-1"
    (stage,) = still["stages"]
    assert stage["message"] == QUEUED and stage.get("lastFailure") is None  # queued 1.5 s: no StartTimeout
    assert still["phase"] == "Running"
    # Kueue owns spec.suspend: the operator never patched the Job's spec; the only patch was the admission.
    assert spec_patches(emulator, "q-pretrain-1") == [{"suspend": False}]
    status = status_of(emulator, "q")
    assert status["phase"] == "Succeeded", status
    (stage,) = status["stages"]
    assert stage["attempt"] == 1 and stage["restarts"] == 0 and stage["step"] == 6 and stage.get("message") is None
    assert list(stored_all(emulator, JOBS_KEY)) == ["q-sources-1-fetch", "q-pretrain-1"]


async def test_suspending_a_queued_pipeline_deletes_the_job_and_requeues_the_same_attempt(
        emulator, cluster, start_operator, kubelet):
    async with start_operator():
        await create_pipeline(cluster, queued("kq", max_steps=60, save_steps=50))
        await wait_for(lambda: stage_status(emulator, "kq", "pretrain", message=QUEUED), 15, what="the queued message")
        await admit(cluster, "kq-pretrain-1")
        await wait_for(lambda: (stage_status(emulator, "kq", "pretrain") or {}).get("step", 0) >= 5, 30, what="training")
        await set_suspend(cluster, "kq", True)
        await wait_for(lambda: stage_status(emulator, "kq", "pretrain", phase="Suspended")
                       and stored(emulator, JOBS_KEY, "kq-pretrain-1") is None, 30, what="Suspended, the Job deleted")
        suspended = copy.deepcopy(status_of(emulator, "kq"))
        await set_suspend(cluster, "kq", False)
        await wait_for(lambda: stage_status(emulator, "kq", "pretrain", message=QUEUED)
                       and stored(emulator, JOBS_KEY, "kq-pretrain-1"), 15, what="the Job re-created and queued")
        requeued = copy.deepcopy(stored(emulator, JOBS_KEY, "kq-pretrain-1"))
        await admit(cluster, "kq-pretrain-1")
        await wait_for(lambda: phase(emulator, "kq") in ("Succeeded", "Failed"), 40, what="the pipeline to finish")

    # Suspended: the running Job was deleted in the foreground (Kueue would unsuspend a patched one).
    (deleted,) = job_requests(emulator, "kq-pretrain-1", kmock.action.DELETE)
    assert deleted.data["propagationPolicy"] == "Foreground"
    assert suspended["phase"] == "Suspended"
    (stage,) = suspended["stages"]
    saved = stage["lastCheckpoint"]["step"]
    assert 5 <= saved < 50  # saved on SIGTERM, not at a saveSteps boundary
    # Resumed: the same attempt's Job again, suspended until Kueue admits it.
    assert len(job_requests(emulator, "kq-pretrain-1", kmock.action.CREATE)) == 2
    assert requeued["spec"]["suspend"] is True and requeued["metadata"]["labels"][QUEUE_LABEL] == "gpu-queue"
    assert requeued["metadata"]["labels"]["refinery.dev/attempt"] == "1"
    assert not (requeued.get("status") or {}).get("startTime")
    # The operator never touched spec.suspend: both patches are the test's admissions.
    assert spec_patches(emulator, "kq-pretrain-1") == [{"suspend": False}, {"suspend": False}]
    status = status_of(emulator, "kq")
    assert status["phase"] == "Succeeded", status
    (stage,) = status["stages"]
    assert stage["attempt"] == 1 and stage["restarts"] == 0 and stage.get("lastFailure") is None  # no budget spent
    assert stage["resumedFrom"]["step"] == saved and stage["step"] == 60
    assert list(stored_all(emulator, JOBS_KEY)) == ["kq-sources-1-fetch", "kq-pretrain-1"]


async def test_a_pod_that_never_starts_is_retried_on_the_infrastructure_budget(emulator, cluster, start_operator, kubelet):
    kubelet.hold.add("pull-pretrain-1")  # attempt 1's image never pulls; attempt 2's does
    retries = {"application": 0, "infrastructure": 1, "backoffSeconds": 1, "startTimeoutSeconds": 1}
    async with start_operator():
        await create_pipeline(cluster, one_stage("pull", max_steps=6, save_steps=2, retries=retries))
        await wait_for(lambda: phase(emulator, "pull") in ("Succeeded", "Failed"), 30, what="the pipeline to finish")
        await wait_for(lambda: "PipelineSucceeded" in [r for _, r, _ in events_of(emulator, "pull")], 5, what="the last Event")

    status = status_of(emulator, "pull")
    assert status["phase"] == "Succeeded", status
    (stage,) = status["stages"]
    assert stage["attempt"] == 2 and stage["jobName"] == "pull-pretrain-2" and stage["step"] == 6
    assert stage["restartsByClass"] == {"application": 0, "infrastructure": 1, "disruption": 0} and stage["restarts"] == 1
    failure = stage["lastFailure"]
    assert (failure["class"], failure["reason"], failure["attempt"]) == ("Infrastructure", "StartTimeout", 1)
    assert "no pod of attempt 1 was ready 1s after it started" in failure["message"]
    assert "ImagePullBackOff" in failure["message"]
    jobs = stored_all(emulator, JOBS_KEY)
    assert sorted(jobs) == ["pull-pretrain-1", "pull-pretrain-2", "pull-sources-1-fetch"]
    first = jobs["pull-pretrain-1"]
    # Ended by the operator, not left pending: the Job failed once its start deadline had passed.
    assert first["metadata"]["annotations"]["refinery.dev/stop-reason"] == "StartTimeout"
    failed_at = next(c["lastTransitionTime"] for c in first["status"]["conditions"] if c["type"] == "Failed")
    assert failed_at > first["status"]["startTime"]  # RFC 3339 in seconds: at least 1 s later
    assert jobs["pull-pretrain-2"]["status"]["startTime"] >= failed_at
    assert any(t == "Warning" and "(Infrastructure, StartTimeout)" in m
               for t, r, m in events_of(emulator, "pull") if r == "AttemptFailed")


async def test_a_pod_that_never_starts_fails_the_pipeline_when_the_budget_is_spent(emulator, cluster, start_operator, kubelet):
    kubelet.hold.add("stuck-pretrain-1")
    # An application budget left over: a StartTimeout must not spend it.
    retries = {"application": 1, "infrastructure": 0, "backoffSeconds": 1, "startTimeoutSeconds": 1}
    async with start_operator():
        await create_pipeline(cluster, one_stage("stuck", max_steps=6, save_steps=2, retries=retries))
        await wait_for(lambda: phase(emulator, "stuck") == "Failed", 30, what="the pipeline to fail")

    status = status_of(emulator, "stuck")
    (stage,) = status["stages"]
    assert stage["phase"] == "Failed" and stage["attempt"] == 1
    assert stage["restartsByClass"] == {"application": 0, "infrastructure": 0, "disruption": 0}
    failure = stage["lastFailure"]
    assert (failure["class"], failure["reason"], failure["attempt"]) == ("Infrastructure", "StartTimeout", 1)
    assert "ImagePullBackOff" in failure["message"] and "kubectl describe pod" in failure["message"]
    assert stage["message"].startswith("attempt 1 failed and the infrastructure retry budget (0) is spent: no pod of attempt 1")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and "ImagePullBackOff" in failed["message"]
    assert list(stored_all(emulator, JOBS_KEY)) == ["stuck-sources-1-fetch", "stuck-pretrain-1"]
