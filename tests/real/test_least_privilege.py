"""Least privilege on a real API server: the operator runs with the chart's ServiceAccount (a
TokenRequest token; the chart's RBAC rendered by the real helm and applied, nothing else) and a
pipeline completes — in both of the chart's modes. RBAC is enforced by kube-apiserver, so kopf's
own calls (which tests/chart/test_rbac_matches_code.py cannot see) are checked too.

A stage pod reports through its pipeline's ServiceAccount, whose Role names only that pipeline's
progress ConfigMaps: with its projected token it cannot patch another pipeline's (403).
"""

from __future__ import annotations

import asyncio

import pytest
from kubernetes.client.exceptions import ApiException

from refinery_operator.k8s import CONFIGMAPS, JOBS, Cluster
from tests.builders import make_pipeline

from .conftest import create_pipeline, get_pipeline, wait_until

pytestmark = pytest.mark.timeout(240)


def two_stages(name: str, namespace: str) -> dict:
    manifest = make_pipeline(name, namespace).stage("pretrain", "pretrain").stage("sft", "sft", from_="pretrain").manifest()
    for stage in manifest["spec"]["stages"]:
        stage["training"] = {"maxSteps": 6, "saveSteps": 2}
    return manifest


async def finished(admin: Cluster, namespace: str, name: str) -> dict | None:
    status = ((await get_pipeline(admin, namespace, name)) or {}).get("status") or {}
    return status if status.get("phase") in ("Succeeded", "Failed") else None


@pytest.mark.parametrize("mode", ["all-namespaces", "watch-namespace"])
async def test_pipeline_completes_with_the_charts_rights(mode, admin, namespace, node, chart_operator):
    operator = chart_operator(namespace if mode == "watch-namespace" else "")
    operator.start()
    await asyncio.to_thread(operator.wait_live)
    await create_pipeline(admin, two_stages("p", namespace))
    status = await wait_until(lambda: finished(admin, namespace, "p"), 120, "the pipeline to finish")
    assert status["phase"] == "Succeeded", (status, operator.log_tail())
    assert [s["phase"] for s in status["stages"]] == ["Succeeded", "Succeeded"]
    # The real job controller, not the test, completed the Jobs from the pods' status.
    job = await admin.get(JOBS, namespace, status["stages"][1]["jobName"])
    assert job["status"]["succeeded"] == 1
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in job["status"]["conditions"])
    assert not refused_calls(operator.log_tail(2000)), operator.log_tail(400)


def refused_calls(log: str) -> list[str]:
    """Lines of the operator's log about a 403, except kopf's documented fallback in one namespace:
    it tries to list namespaces (to match patterns), is refused, and uses the names it was given."""
    lines = log.splitlines()
    fallback = [i for i, line in enumerate(lines) if "Not enough permissions to list namespaces" in line
                or "Not enough permissions to watch for namespaces" in line]
    return [line for i, line in enumerate(lines)
            if ("Forbidden" in line or " 403" in line) and not any(abs(i - j) <= 1 for j in fallback)]


async def test_stage_pod_cannot_patch_another_pipelines_progress(admin, namespace, node, chart_operator):
    operator = chart_operator()
    operator.start()
    await asyncio.to_thread(operator.wait_live)
    await create_pipeline(admin, two_stages("first", namespace))
    await create_pipeline(admin, two_stages("second", namespace))
    for name in ("first", "second"):
        assert (await wait_until(lambda name=name: finished(admin, namespace, name), 120, f"{name} to finish"))["phase"] == "Succeeded"
    pod = next(p for p in node.pods.values() if p.name.startswith("first-pretrain-"))
    as_pod = Cluster.from_environment(str(pod.folder / "kubeconfig"))  # the pod's projected token
    try:
        own = await as_pod.patch(CONFIGMAPS, namespace, "first-pretrain-progress", {"metadata": {"annotations": {"t": "1"}}})
        assert own is not None  # its own progress record: allowed
        with pytest.raises(ApiException) as refused:
            await as_pod.patch(CONFIGMAPS, namespace, "second-pretrain-progress", {"data": {"progress.json": "{}"}})
        assert refused.value.status == 403
        with pytest.raises(ApiException) as listing:
            await as_pod.request("GET", CONFIGMAPS.path(namespace))
        assert listing.value.status == 403
    finally:
        as_pod.close()
