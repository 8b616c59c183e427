"""The real kopf operator against kmock, with a quick torch-free stage command (fake_stage.py).

Same harness as the end-to-end test of examples/tiny-chat.yaml, but each stage takes well under
a second, so the operator's behaviour (ordering, restarts, retries, invalid specs) is checked
in seconds.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import kmock
import pytest

from tests.builders import chat_pipeline, make_pipeline

from .conftest import create_pipeline, stored, stored_all, wait_for

FAKE_STAGE = [sys.executable, str(Path(__file__).with_name("fake_stage.py"))]
PIPELINES_KEY = "refinery.dev/v1alpha1/trainingpipelines"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def fake_trainer(kubelet):
    kubelet.command_map["refinery-train"] = FAKE_STAGE


def jobs_created_since(emulator, first_request: int) -> list[str]:
    """Names of the Jobs POSTed from the `first_request`-th request on (iterating kmock yields the
    requests it served)."""
    return [r.data["metadata"]["name"] for r in list(emulator)[first_request:]
            if r.action == kmock.action.CREATE and r.resource == kmock.resource("batch/v1/jobs")]


async def start_to_first_checkpoint(cluster, emulator, name: str) -> None:
    """Create a one-stage pipeline of 40 steps (a checkpoint every 4) and wait for its first checkpoint."""
    manifest = tiny(make_pipeline(name).stage("pretrain", "pretrain"))
    manifest["spec"]["stages"][0]["training"] = {"maxSteps": 40, "saveSteps": 4}
    await create_pipeline(cluster, manifest)
    await wait_for(lambda: ((stored(emulator, PIPELINES_KEY, name).get("status") or {}).get("checkpointStep") or 0) >= 4,
                   30, what="a first checkpoint")


def tiny(builder):
    manifest = builder.manifest()
    for stage in manifest["spec"]["stages"]:
        stage["training"] = {"maxSteps": 6, "saveSteps": 2}
    return manifest


def stage_status(emulator, pipeline, stage, **expected):
    status = (stored(emulator, PIPELINES_KEY, pipeline) or {}).get("status") or {}
    found = next((s for s in status.get("stages", []) if s["name"] == stage), None)
    return found if found and all(found.get(k) == v for k, v in expected.items()) else None


def count_status_patches(emulator):
    return sum(1 for r in emulator if r.method == kmock.method.PATCH and r.url.path.endswith("/status"))


def phase(emulator, name):
    return ((stored(emulator, PIPELINES_KEY, name) or {}).get("status") or {}).get("phase")


async def test_pipeline_runs_stage_after_stage(emulator, cluster, start_operator, kubelet):
    async with start_operator():
        await create_pipeline(cluster, tiny(chat_pipeline("chat")))
        await wait_for(lambda: phase(emulator, "chat") in ("Succeeded", "Failed"), 60, what="the pipeline to finish")

    status = stored(emulator, PIPELINES_KEY, "chat")["status"]
    assert status["phase"] == "Succeeded", status
    assert [s["name"] for s in status["stages"]] == ["pretrain", "sft", "reward", "rlhf"]
    for stage in status["stages"]:
        assert stage["phase"] == "Succeeded"
        assert stage["lastCheckpoint"]["step"] == 6
        assert stage["checkpoints"] == 3
        assert stage["progress"] == 1.0
        assert set(stage["metrics"]) == {"loss", "evalLoss"}
        assert stage["output"].endswith(f"/default/chat/{stage['name']}/model")
    jobs = stored_all(emulator, "batch/v1/jobs")
    assert sorted(jobs) == ["chat-pretrain-1", "chat-reward-1", "chat-rlhf-1", "chat-sft-1", "chat-sources-1-fetch"]
    # Stage order: each Job started after the stages it depends on completed; the inputs check first.
    started = {name: job["status"]["startTime"] for name, job in jobs.items()}
    completed = {name: job["status"]["completionTime"] for name, job in jobs.items()}
    assert completed["chat-sources-1-fetch"] <= started["chat-pretrain-1"]
    checked = next(c for c in status["conditions"] if c["type"] == "InputsChecked")
    assert (checked["status"], checked["reason"]) == ("True", "InputsChecked"), checked
    assert completed["chat-pretrain-1"] <= started["chat-sft-1"]
    assert max(completed["chat-sft-1"], completed["chat-reward-1"]) <= started["chat-rlhf-1"]
    # The handoff: rlhf was given sft's and reward's final models.
    rlhf = next(s for s in status["stages"] if s["name"] == "rlhf")
    assert rlhf["inputs"]["model"].endswith("/chat/sft/model")
    assert rlhf["inputs"]["rewardModel"].endswith("/chat/reward/model")
    # kopf's bookkeeping is in annotations, not in our status.
    annotations = stored(emulator, PIPELINES_KEY, "chat")["metadata"]["annotations"]
    assert any(key.startswith("refinery.dev/") for key in annotations)
    assert set(status) <= {"phase", "observedGeneration", "currentStage", "progress", "checkpointStep",
                           "checkpointTime", "conditions", "stages"}


async def test_restart_mid_run_creates_no_duplicate_job(emulator, cluster, start_operator, kubelet):
    manifest = tiny(make_pipeline("restart").stage("pretrain", "pretrain").stage("sft", "sft", from_="pretrain"))
    manifest["spec"]["stages"][0]["training"]["maxSteps"] = 30  # ~1.5 s: long enough to restart under it
    async with start_operator():
        await create_pipeline(cluster, manifest)
        await wait_for(lambda: "restart-pretrain-1" in kubelet.pods, 15, what="the first Job")
    requests_before = len(list(emulator))  # iterating kmock yields the requests it served

    async with start_operator():  # a new operator process, same cluster, same Job still running
        await wait_for(lambda: phase(emulator, "restart") == "Succeeded", 60, what="the pipeline to finish")

    jobs = stored_all(emulator, "batch/v1/jobs")
    assert sorted(jobs) == ["restart-pretrain-1", "restart-sft-1", "restart-sources-1-fetch"]
    assert jobs_created_since(emulator, requests_before) == ["restart-sft-1"]  # the running pretrain Job was found, not re-posted


async def test_a_job_deleted_while_the_operator_was_down_is_created_again(emulator, cluster, start_operator, kubelet):
    """The restarted operator fills its cache from a list: a Job gone meanwhile is not in it, so the
    attempt the status names is created again (same name) and resumes from its checkpoint."""
    from refinery_operator.k8s import JOBS

    async with start_operator():
        await start_to_first_checkpoint(cluster, emulator, "gone")
    assert await cluster.delete(JOBS, "default", "gone-pretrain-1")  # foreground: the kubelet stops the pod
    await wait_for(lambda: stored(emulator, "batch/v1/jobs", "gone-pretrain-1") is None, 30, what="the Job to go")
    requests_before = len(list(emulator))

    async with start_operator():
        await wait_for(lambda: phase(emulator, "gone") == "Succeeded", 60, what="the pipeline to finish")

    assert jobs_created_since(emulator, requests_before) == ["gone-pretrain-1"]  # the same attempt, created once
    (stage,) = stored(emulator, PIPELINES_KEY, "gone")["status"]["stages"]
    assert stage["attempt"] == 1 and stage["restarts"] == 0 and stage["step"] == 40
    assert stage["resumedFrom"]["step"] >= 4  # from the checkpoint the deleted Job's pod saved


async def test_evicted_pod_is_retried_from_its_checkpoint(emulator, cluster, start_operator, kubelet):
    async with start_operator():
        await start_to_first_checkpoint(cluster, emulator, "evict")
        await kubelet.evict("evict-pretrain-1")
        retrying = await wait_for(lambda: stage_status(emulator, "evict", "pretrain", attempt=2), 15, what="attempt 2")
        await wait_for(lambda: phase(emulator, "evict") == "Succeeded", 60, what="the retry to finish")

    assert retrying["lastFailure"]["class"] == "Disruption"  # not a failure: no budget spent
    assert retrying["lastFailure"]["reason"] == "Disrupted"
    assert retrying["jobName"] == "evict-pretrain-2"
    (stage,) = stored(emulator, PIPELINES_KEY, "evict")["status"]["stages"]
    assert stage["attempt"] == 2 and stage["restarts"] == 1 and stage["phase"] == "Succeeded"
    assert sorted(stored_all(emulator, "batch/v1/jobs")) == ["evict-pretrain-1", "evict-pretrain-2", "evict-sources-1-fetch"]
    progress = stored(emulator, "v1/configmaps", "evict-pretrain-progress")["data"]["progress.json"]
    assert '"resumedFrom"' in progress  # attempt 2 started from attempt 1's checkpoint


async def test_invalid_spec_fails_once_without_a_crash_loop(emulator, cluster, start_operator, kubelet):
    manifest = make_pipeline("cycle").stage("a", "sft", model={"path": "models/a"}, dependsOn=["b"]) \
        .stage("b", "sft", model={"path": "models/b"}, dependsOn=["a"]).manifest()
    async with start_operator() as operator:
        await create_pipeline(cluster, manifest)
        await wait_for(lambda: phase(emulator, "cycle") == "Failed", 15, what="the Failed phase")
        patches_then = count_status_patches(emulator)
        await asyncio.sleep(3)  # a crash loop would keep retrying and patching here
        patches_later = count_status_patches(emulator)
        assert operator.is_alive()

    status = stored(emulator, PIPELINES_KEY, "cycle")["status"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "InvalidSpec"
    assert "spec.stages" in failed["message"] and "dependency cycle" in failed["message"], failed["message"]
    assert stored_all(emulator, "batch/v1/jobs") == {}
    assert patches_later == patches_then, "the operator kept patching an invalid pipeline"
