"""Faults no emulator shows, on a real API server (the operator under the chart's ServiceAccount,
stages are the quick fake stage, the real job controller and garbage collector at work):

- the operator SIGKILLed at 10 random points of a run: no Job is ever created twice, the status
  never goes backwards, the pipeline completes;
- kube-apiserver stopped and started again mid-run: the operator, its watches and the stage
  pods' reports reconnect, the pipeline completes;
- a watch resumed after an etcd compaction is answered `410 Gone`: kopf re-lists, and the
  changes made meanwhile (a stage finished while the operator was frozen) are not missed;
- a stage's Job deleted while the operator was down: it is re-created and the stage resumes from
  its newest checkpoint.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest

from refinery_operator.k8s import CONFIGMAPS, JOBS, Cluster
from tests.builders import make_pipeline

from .conftest import create_pipeline, get_pipeline, wait_until
from .test_least_privilege import finished

pytestmark = pytest.mark.timeout(300)
PHASE_ORDER = {"Pending": 0, "Running": 1, "Succeeded": 2}


def chain(name: str, namespace: str, stages: int, steps: int) -> dict[str, Any]:
    builder = make_pipeline(name, namespace).stage("s0", "pretrain")
    for i in range(1, stages):
        builder = builder.stage(f"s{i}", "sft", from_=f"s{i - 1}")
    manifest = builder.manifest()
    for stage in manifest["spec"]["stages"]:
        stage["training"] = {"maxSteps": steps, "saveSteps": 5}
    return manifest


class StatusWatcher:
    """Samples a pipeline's status and records every step backwards (none allowed)."""

    def __init__(self, admin: Cluster, namespace: str, name: str) -> None:
        self.admin, self.namespace, self.name = admin, namespace, name
        self.seen: dict[str, tuple[int, int, int]] = {}  # stage -> (phase rank, checkpoint step, attempt)
        self.backwards: list[str] = []
        self.samples = 0

    async def run(self) -> None:
        while True:
            try:
                body = await get_pipeline(self.admin, self.namespace, self.name)
            except Exception:  # noqa: BLE001 - the API server may be restarting: sample again
                body = None
            for stage in ((body or {}).get("status") or {}).get("stages", []):
                now = (PHASE_ORDER.get(stage.get("phase"), 0), (stage.get("lastCheckpoint") or {}).get("step") or 0,
                       stage.get("attempt") or 0)
                before = self.seen.get(stage["name"], (0, 0, 0))
                if any(n < b for n, b in zip(now, before)):
                    self.backwards.append(f"{stage['name']}: {before} -> {now}")
                self.seen[stage["name"]] = tuple(max(n, b) for n, b in zip(now, before))
            self.samples += 1
            await asyncio.sleep(0.1)


async def jobs_of(admin: Cluster, namespace: str) -> list[dict[str, Any]]:
    return (await admin.request("GET", JOBS.path(namespace))).get("items") or []


async def test_operator_killed_at_ten_random_points(admin, namespace, node, chart_operator):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    operator = chart_operator()
    operator.start()
    await asyncio.to_thread(operator.wait_live)
    await create_pipeline(admin, chain("chaos", namespace, stages=4, steps=200))  # ~40 s of training
    watcher = StatusWatcher(admin, namespace, "chaos")
    sampling = asyncio.create_task(watcher.run())
    kills = []
    try:
        for _ in range(10):
            await asyncio.sleep(rng.uniform(0.2, 3.0))
            status = ((await get_pipeline(admin, namespace, "chaos")) or {}).get("status") or {}
            kills.append((status.get("phase"), status.get("currentStage"), status.get("checkpointStep")))
            operator.kill()
            operator.start()
            await asyncio.to_thread(operator.wait_live)
        status = await wait_until(lambda: finished(admin, namespace, "chaos"), 180, "the pipeline to finish")
    finally:
        sampling.cancel()
    assert status["phase"] == "Succeeded", (seed, status, operator.log_tail())
    assert not watcher.backwards, (seed, watcher.backwards)
    jobs = sorted(j["metadata"]["name"] for j in await jobs_of(admin, namespace))
    # One attempt each, none twice, and one inputs check before s0.
    assert jobs == ["chaos-s0-1", "chaos-s1-1", "chaos-s2-1", "chaos-s3-1", "chaos-sources-1-fetch"], (seed, jobs)
    assert len(node.started) == 5, node.started  # one pod per Job: no attempt was ever started again
    assert [s["lastCheckpoint"]["step"] for s in status["stages"]] == [200, 200, 200, 200]
    # Every kill fell during the run: Pending is its first second or two, while the inputs are checked.
    assert all(phase in ("Pending", "Running") for phase, _, _ in kills), (seed, kills)
    assert len(set(kills)) >= 5, (seed, kills)  # at different points of it


async def test_kube_apiserver_restarted_mid_run(admin, namespace, node, chart_operator, control_plane):
    operator = chart_operator()
    operator.start()
    await asyncio.to_thread(operator.wait_live)
    await create_pipeline(admin, chain("restart", namespace, stages=2, steps=100))

    async def first_checkpoint():
        status = ((await get_pipeline(admin, namespace, "restart")) or {}).get("status") or {}
        return (status.get("checkpointStep") or 0) >= 5

    await wait_until(first_checkpoint, 60, "a first checkpoint")
    watcher = StatusWatcher(admin, namespace, "restart")
    sampling = asyncio.create_task(watcher.run())
    try:
        await asyncio.to_thread(control_plane.restart_apiserver, 3.0)
        status = await wait_until(lambda: finished(admin, namespace, "restart"), 150, "the pipeline to finish")
    finally:
        sampling.cancel()
    assert status["phase"] == "Succeeded", (status, operator.log_tail())
    assert operator.process.poll() is None  # it reconnected; it did not die
    assert node.errors > 0  # the node saw the API server gone
    assert not watcher.backwards, watcher.backwards
    assert [s["lastCheckpoint"]["step"] for s in status["stages"]] == [100, 100]
    assert sorted(j["metadata"]["name"] for j in await jobs_of(admin, namespace)) == ["restart-s0-1", "restart-s1-1",
                                                                                         "restart-sources-1-fetch"]


async def test_watch_resumed_after_compaction_gets_410_and_relists(admin, namespace, node, chart_operator, control_plane):
    operator = chart_operator(verbose=True)  # kopf logs its watch restarts at debug level
    operator.start()
    await asyncio.to_thread(operator.wait_live)
    await create_pipeline(admin, chain("gone", namespace, stages=2, steps=60))

    async def stage_running(name: str):
        status = ((await get_pipeline(admin, namespace, "gone")) or {}).get("status") or {}
        return status.get("currentStage") == name and (status.get("checkpointStep") or 0) >= 5

    await wait_until(lambda: stage_running("s0"), 60, "s0 to checkpoint")
    operator.pause()  # frozen, watches open: it sees nothing from here on
    try:
        async def s0_job_complete():
            job = await admin.get(JOBS, namespace, "gone-s0-1")
            return job and (job.get("status") or {}).get("succeeded") == 1

        await wait_until(s0_job_complete, 60, "s0's Job to complete while the operator is frozen")
        # The API server restarts (every watch connection drops) and etcd forgets the history the
        # operator's watches would resume from.
        await asyncio.to_thread(control_plane.restart_apiserver, 0.5)
        await asyncio.to_thread(control_plane.compact_etcd)
    finally:
        operator.resume()
    # Nothing else will change on its own: s1 starts only if the operator re-listed and saw s0 done.
    status = await wait_until(lambda: finished(admin, namespace, "gone"), 90, "the pipeline to finish")
    assert status["phase"] == "Succeeded", (status, operator.log_tail())
    log = operator.log.read_text()
    assert "Restarting the watch-stream" in log, "no watch was answered 410 Gone"
    assert sorted(j["metadata"]["name"] for j in await jobs_of(admin, namespace)) == ["gone-s0-1", "gone-s1-1", "gone-sources-1-fetch"]


async def test_job_deleted_while_the_operator_was_down(admin, kubectl, namespace, node, chart_operator):
    operator = chart_operator()
    operator.start()
    await asyncio.to_thread(operator.wait_live)
    await create_pipeline(admin, chain("lost", namespace, stages=2, steps=100))

    async def s0_checkpointed():
        status = ((await get_pipeline(admin, namespace, "lost")) or {}).get("status") or {}
        return status.get("currentStage") == "s0" and (status.get("checkpointStep") or 0) >= 10

    await wait_until(s0_checkpointed, 60, "s0 to checkpoint")
    await asyncio.to_thread(operator.stop)
    # In a thread: the test node runs in this loop, and must stop the Job's pod for the delete to end.
    await asyncio.to_thread(kubectl.run, "delete", "job", "lost-s0-1", "-n", namespace, "--cascade=foreground",
                            "--wait=true", "--timeout=60s")
    operator.start()
    await asyncio.to_thread(operator.wait_live)
    status = await wait_until(lambda: finished(admin, namespace, "lost"), 150, "the pipeline to finish")
    assert status["phase"] == "Succeeded", (status, operator.log_tail())
    s0 = status["stages"][0]
    assert s0["lastCheckpoint"]["step"] == 100
    s0_pods = [p for p in node.started if p.startswith("lost-s0-")]
    assert len(s0_pods) == 2, node.started  # the deleted Job's pod, then the one that resumed
    # The re-created Job's pod resumed from the checkpoint the deleted one saved on SIGTERM.
    progress = await admin.get(CONFIGMAPS, namespace, "lost-s0-progress")
    resumed = json.loads(progress["data"]["progress.json"])["resumedFrom"]
    assert resumed["step"] >= 10, resumed
