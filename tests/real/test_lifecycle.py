"""Status isolation and garbage collection on a real API server.

- The status subresource isolates: a write to the object never changes `.status`, a spec change
  never clobbers what the operator wrote, and `observedGeneration` follows `metadata.generation`.
- Conflicts: the operator's status patches carry the resourceVersion they were computed from, so
  the server refuses (409) a status computed from an outdated object — a pipeline edited between
  the operator's read and its write. The refused pass runs again from a fresh read: the edit is
  kept, the new generation observed, and nothing the earlier passes wrote is lost; a storm of
  other writers (annotation patches every 50 ms) costs conflicts and retries, never an update.
- Deleting a pipeline: kopf releases its finalizer, and the real garbage collector deletes what
  the pipeline owns — Jobs (and their pods), ConfigMaps, the headless Service of a multi-node
  stage, the ServiceAccount, Role and RoleBinding, and the claim the operator created.
"""

from __future__ import annotations

import asyncio

import pytest
from kubernetes.client.exceptions import ApiException

from refinery_operator import metrics
from refinery_operator.children import ChildCache
from refinery_operator.k8s import BY_KIND, JOBS, MERGE_PATCH, PIPELINES, Resource, StatusConflict
from refinery_operator.reconcile import reconcile, reconcile_current
from tests.builders import make_pipeline

from .conftest import create_pipeline, get_pipeline, wait_until
from .test_faults import StatusWatcher, chain
from .test_least_privilege import finished

pytestmark = pytest.mark.timeout(240)
PODS = Resource("", "v1", "pods")


async def status_of(admin, namespace: str, name: str) -> dict:
    return ((await get_pipeline(admin, namespace, name)) or {}).get("status") or {}


async def test_status_is_isolated_and_observed_generation_follows(admin, namespace, node, chart_operator):
    operator = chart_operator()
    operator.start()
    await asyncio.to_thread(operator.wait_live)
    await create_pipeline(admin, chain("iso", namespace, stages=2, steps=100))

    async def checkpointed():
        status = await status_of(admin, namespace, "iso")
        return status if (status.get("checkpointStep") or 0) >= 10 else None

    before = await wait_until(checkpointed, 60, "a checkpoint")
    assert before["observedGeneration"] == 1
    # A write to the object itself: the API server drops its `.status` part.
    await admin.request("PATCH", PIPELINES.path(namespace, "iso"), content_type=MERGE_PATCH,
                        body={"metadata": {"labels": {"team": "ml"}}, "status": {"phase": "Failed", "stages": []}})
    after = await status_of(admin, namespace, "iso")
    assert after["phase"] == "Running" and after["stages"], after
    # A spec change (a later stage's training): generation 2, observed by the operator, status kept.
    await admin.request("PATCH", PIPELINES.path(namespace, "iso"), content_type="application/json-patch+json",
                        body=[{"op": "replace", "path": "/spec/stages/1/training/maxSteps", "value": 60}])
    body = await get_pipeline(admin, namespace, "iso")
    assert body["metadata"]["generation"] == 2

    async def observed():
        status = await status_of(admin, namespace, "iso")
        return status if status.get("observedGeneration") == 2 else None

    status = await wait_until(observed, 30, "observedGeneration 2")
    s0 = next(s for s in status["stages"] if s["name"] == "s0")
    assert (s0.get("lastCheckpoint") or {}).get("step", 0) >= before["checkpointStep"]  # nothing clobbered
    final = await wait_until(lambda: finished(admin, namespace, "iso"), 120, "the pipeline to finish")
    assert final["phase"] == "Succeeded" and [s["lastCheckpoint"]["step"] for s in final["stages"]] == [100, 60]
    # Generation 2 may name new paths: its inputs were checked again (a Job of its own) before s1 started.
    jobs = {j["metadata"]["name"]: j for j in (await admin.request("GET", JOBS.path(namespace)))["items"]}
    assert sorted(n for n in jobs if "-sources-" in n) == ["iso-sources-1-fetch", "iso-sources-2-fetch"]
    assert jobs["iso-sources-2-fetch"]["metadata"]["annotations"]["refinery.dev/generation"] == "2"
    assert jobs["iso-sources-2-fetch"]["status"]["completionTime"] <= jobs["iso-s1-1"]["status"]["startTime"]
    checked = next(c for c in final["conditions"] if c["type"] == "InputsChecked")
    assert (checked["status"], checked["observedGeneration"]) == ("True", 2), checked


def conflicts_counted() -> float:
    return metrics.OPERATOR.registry.get_sample_value("refinery_status_conflicts_total") or 0.0


async def test_a_status_patch_that_meets_a_conflict_is_passed_again_and_loses_nothing(admin, namespace):
    """The operator's reconcile, driven by hand against the real server: a pass computed from a
    read that is no longer current (the operator wrote since, then someone edited the spec)."""
    await create_pipeline(admin, chain("race", namespace, stages=2, steps=100))
    children = ChildCache()
    read = await get_pipeline(admin, namespace, "race")
    first = await reconcile_current(admin, read, children)
    assert first.status_patched and first.resource_version != read["metadata"]["resourceVersion"]
    written = await status_of(admin, namespace, "race")
    assert written["observedGeneration"] == 1 and written["stages"]
    # Another writer edits the spec: generation 2, a new resourceVersion.
    await admin.request("PATCH", PIPELINES.path(namespace, "race"), content_type="application/json-patch+json",
                        body=[{"op": "replace", "path": "/spec/stages/1/training/maxSteps", "value": 60}])
    # A pass from the outdated read (no status yet, generation 1) is refused, and writes nothing ...
    with pytest.raises(StatusConflict):
        await reconcile(admin, read, children)
    assert await status_of(admin, namespace, "race") == written
    # ... and passed again from a fresh read it is written: the edit kept, generation 2 observed,
    # every stage of the status written before still there, on the same Job and attempt.
    conflicts = conflicts_counted()
    again = await reconcile_current(admin, read, children)
    assert again.status_patched and conflicts_counted() == conflicts + 1
    body = await get_pipeline(admin, namespace, "race")
    assert body["spec"]["stages"][1]["training"]["maxSteps"] == 60
    assert body["status"]["observedGeneration"] == 2 == body["metadata"]["generation"]
    for before in written["stages"]:
        after = next(s for s in body["status"]["stages"] if s["name"] == before["name"])
        assert (after.get("jobName"), after.get("attempt")) == (before.get("jobName"), before.get("attempt")), after
    assert again.resource_version == body["metadata"]["resourceVersion"]
    # No operator will ever run this pipeline: take it away with what it owns, so the operators of
    # later tests (all namespaces) do not find its Jobs failing in a namespace being deleted.
    await admin.delete(PIPELINES, namespace, "race", propagation="Background")


async def test_concurrent_writers_cost_conflicts_never_an_update(admin, namespace, node, chart_operator):
    operator = chart_operator()
    operator.start()
    await asyncio.to_thread(operator.wait_live)
    await create_pipeline(admin, chain("busy", namespace, stages=2, steps=80))
    watcher = StatusWatcher(admin, namespace, "busy")
    sampling = asyncio.create_task(watcher.run())
    writes = 0

    async def storm() -> None:  # another controller labelling the object: a new resourceVersion every 50 ms
        nonlocal writes
        while True:
            await admin.request("PATCH", PIPELINES.path(namespace, "busy"), content_type=MERGE_PATCH,
                                body={"metadata": {"annotations": {"example.com/touched": str(writes)}}})
            writes += 1
            await asyncio.sleep(0.05)

    storming = asyncio.create_task(storm())
    try:
        status = await wait_until(lambda: finished(admin, namespace, "busy"), 120, "the pipeline to finish")
    finally:
        storming.cancel()
        sampling.cancel()
    assert writes > 50
    assert status["phase"] == "Succeeded" and [s["lastCheckpoint"]["step"] for s in status["stages"]] == [80, 80]
    assert [s["checkpoints"] for s in status["stages"]] == [16, 16]  # every checkpoint counted
    assert not watcher.backwards, watcher.backwards
    log = operator.log.read_text(errors="replace")
    refused = log.count("reconciling again from a fresh read")
    assert refused >= 1, "the storm never made a status patch conflict: the patches are not conditional"
    assert "Forbidden" not in log, "the fresh read after a conflict needs `get` on trainingpipelines (chart RBAC)"
    print(f"{writes} writes by another client, {refused} status patches refused (409) and passed again")


async def test_deleting_a_pipeline_garbage_collects_what_it_owns(admin, kubectl, namespace, node, chart_operator):
    operator = chart_operator()
    operator.start()
    await asyncio.to_thread(operator.wait_live)
    manifest = (make_pipeline("gc", namespace).stage("pretrain", "pretrain", resources={"nodes": 2})
                .storage(claim={"size": "1Gi", "accessModes": ["ReadWriteMany"]}).manifest())
    manifest["spec"]["stages"][0]["training"] = {"maxSteps": 1000, "saveSteps": 5}
    await create_pipeline(admin, manifest)
    owned = {("Job", "gc-pretrain-1"), ("Service", "gc-pretrain-1"), ("ConfigMap", "gc-pretrain-progress"),
             ("ConfigMap", "gc-pretrain-1-config"), ("ServiceAccount", "gc-stage"), ("Role", "gc-stage"),
             ("RoleBinding", "gc-stage"), ("PersistentVolumeClaim", "gc-workspace")}

    async def present() -> set[tuple[str, str]]:
        found = set()
        for kind, name in owned:
            if await admin.get(BY_KIND[kind], namespace, name) is not None:
                found.add((kind, name))
        return found

    async def all_present():
        return await present() == owned

    async def pods_running():
        pods = (await admin.request("GET", PODS.path(namespace))).get("items") or []
        return len([p for p in pods if (p.get("status") or {}).get("phase") == "Running"]) == 2

    try:
        await wait_until(all_present, 60, "the pipeline's objects")
    except AssertionError:
        raise AssertionError(f"missing {owned - await present()}; names: "
                             f"{kubectl.run('get', 'all,cm,sa,role,rolebinding,pvc', '-n', namespace).stdout}") from None
    await wait_until(pods_running, 60, "both pods of the Indexed Job running")
    for kind, name in owned - {("PersistentVolumeClaim", "gc-workspace")}:
        refs = (await admin.get(BY_KIND[kind], namespace, name))["metadata"]["ownerReferences"]
        assert [(r["kind"], r["name"], r.get("controller")) for r in refs] == [("TrainingPipeline", "gc", True)], (kind, refs)

    await asyncio.to_thread(kubectl.run, "delete", "tp", "gc", "-n", namespace, "--wait=true", "--timeout=60s")
    assert await get_pipeline(admin, namespace, "gc") is None  # kopf released its finalizer

    async def nothing_left():
        pods = (await admin.request("GET", PODS.path(namespace))).get("items") or []
        return not pods and not await present()

    try:
        await wait_until(nothing_left, 90, "the garbage collector")
    except AssertionError:
        raise AssertionError(f"left: {await present()}") from None
    assert not (await admin.request("GET", JOBS.path(namespace))).get("items")
