"""Every pod Refinery creates passes the `restricted` Pod Security Standard, on a real API server.

The namespace is labelled `pod-security.kubernetes.io/enforce=restricted`, so kube-apiserver's
PodSecurity admission refuses any pod that breaks the standard (the job controller would then
record FailedCreate and the pipeline would never finish). One pipeline makes every kind of pod:
the initializer, single-node stages, the prune Jobs of checkpoint retention and the export step;
it must succeed. A second one has a multi-node stage (an Indexed Job of 2 pods): both pods must
be admitted.

What this cannot show (tests/cluster does, on a real kubelet): that the trainer image runs with
a read-only root filesystem — here pods are local processes (conftest.py).
"""

from __future__ import annotations

import asyncio
import json

import pytest
import yaml

from refinery_operator.k8s import PODS

from .conftest import create_pipeline, wait_until
from .test_least_privilege import finished, two_stages

pytestmark = pytest.mark.timeout(240)


def every_kind_of_pod(namespace: str) -> dict:
    manifest = two_stages("psa", namespace)
    spec = manifest["spec"]
    spec["checkpoints"] = {"keepLast": 1}  # prune Jobs after each stage
    spec["export"] = {"stage": "sft", "to": "exports/psa"}  # the export step
    return manifest


def multi_node(namespace: str) -> dict:
    """A multi-node stage (an Indexed Job, a headless Service). Its fake stage never completes a
    rendezvous here (one loopback, no DNS), so this one is only watched until both pods run."""
    manifest = two_stages("mn", namespace)
    manifest["spec"]["storage"] = {"claim": {"size": "1Gi", "accessModes": ["ReadWriteMany"]}}
    manifest["spec"]["stages"][0]["resources"] = {"nodes": 2}
    return manifest


async def test_every_pod_of_a_pipeline_is_admitted_under_restricted(admin, kubectl, namespace, node, chart_operator):
    kubectl.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
                "pod-security.kubernetes.io/enforce-version=latest", "--overwrite")
    # Enforcement is on: a pod without the restricted settings is refused in this namespace.
    bare = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare", "namespace": namespace},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    refused = kubectl.run("create", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(bare), check=False)
    assert refused.returncode != 0 and 'violates PodSecurity "restricted:latest"' in refused.stderr, refused.stderr

    operator = chart_operator(namespace)
    operator.start()
    await asyncio.to_thread(operator.wait_live)
    await create_pipeline(admin, every_kind_of_pod(namespace))
    await create_pipeline(admin, multi_node(namespace))
    try:
        status = await wait_until(lambda: finished(admin, namespace, "psa"), 120, "the pipeline to finish")
    except AssertionError:
        events = kubectl.run("get", "events", "-n", namespace, "-o", "custom-columns=R:.reason,O:.involvedObject.name,M:.message").stdout
        pipeline = kubectl.run("get", "tp", "psa", "-n", namespace, "-o", "jsonpath={.status}").stdout
        raise AssertionError(f"{pipeline[:3000]}\n{events[-4000:]}") from None
    events = kubectl.run("get", "events", "-n", namespace, "--field-selector", "reason=FailedCreate", "-o", "name").stdout
    assert status["phase"] == "Succeeded" and not events, (json.dumps(status)[:2000], events)

    async def both_multi_node_pods():
        return len([p for p in node.pods.values() if p.name.startswith("mn-pretrain-1-")]) == 2

    await wait_until(both_multi_node_pods, 60, "both pods of the multi-node stage")
    pods = list(node.pods.values())
    kinds = {kind for p in pods for kind in ("sources-1-fetch", "pretrain-1", "sft-1", "prune", "export-1") if kind in p.name}
    assert kinds == {"sources-1-fetch", "pretrain-1", "sft-1", "prune", "export-1"}, sorted(p.name for p in pods)
    assert len([p for p in pods if p.name.startswith("mn-pretrain-1-")]) == 2, sorted(p.name for p in pods)  # the Indexed Job
    stored = (await admin.request("GET", PODS.path(namespace)))["items"]
    for pod in stored:  # what made them pass, checked on what the API server stored
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert (sc["allowPrivilegeEscalation"], sc["capabilities"]["drop"], sc["readOnlyRootFilesystem"]) == (False, ["ALL"], True)
        assert {k for v in spec["volumes"] for k in v if k != "name"} <= {
            "persistentVolumeClaim", "configMap", "emptyDir", "projected", "secret", "downwardAPI"}
    print(f"\n{len(stored)} pods admitted under enforce=restricted:", *sorted(p["metadata"]["name"] for p in stored), sep="\n  ")
