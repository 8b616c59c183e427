"""Two real nodes on one control plane, the images loaded and the chart installed: the set-up that
benchmarks/multinode.py and benchmarks/inplace_restart.py share with tests/cluster (whose helpers
it reuses: image builds, `helm install`, hostPath volumes). Root, podman, containerd, dnsmasq:
see "Testing on a real node" in the README.

    with two_nodes(Path("/tmp/bench")) as cluster:   # cluster.nodes: [first, second]
        ...
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.chart.conftest import extract_helm  # noqa: E402
from tests.cluster.conftest import (  # noqa: E402
    CONTROL_PLANE, NODE, NODE_OPTIONS, OPERATOR_NAMESPACE, RELEASE, Cluster, helm_install, hostpath_volume,
    load_build_images, missing_requirement, traversable,
)
from tests.real.harness import Kubectl, kubectl_binary  # noqa: E402


@contextlib.contextmanager
def two_nodes(folder: Path):
    """A control plane, two nodes (DNS and pod routes on; the second without a scheduler), the
    trainer image on both, the operator installed by the chart. Stops everything it started."""
    reason = missing_requirement()
    if reason:
        raise SystemExit(f"cannot run on real nodes: {reason}")
    images = load_build_images().build_images()
    traversable(folder)  # the nodes' dnsmasq (user nobody) reads its records under it
    plane, nodes = folder / "control-plane", [folder / "node-a", folder / "node-b"]
    names: list[str] = []
    try:
        up = subprocess.run([CONTROL_PLANE, "up", plane], stdout=subprocess.PIPE, text=True, check=True, timeout=600)
        kubeconfig = Path(up.stdout.splitlines()[-1])
        for i, node in enumerate(nodes):
            extra = {"REFINERY_NODE_SCHEDULER": "0"} if i else {}
            joined = subprocess.run([NODE, "up", node, plane], stdout=subprocess.PIPE, text=True, check=True,
                                    timeout=300, env={**os.environ, **NODE_OPTIONS, **extra})
            names.append(joined.stdout.split()[-1])
            for target in ("operator", "trainer-cpu") if i == 0 else ("trainer-cpu",):
                subprocess.run([NODE, "load", node, images[target]["archive"]], stdout=subprocess.DEVNULL,
                               check=True, timeout=600)
        cluster = Cluster(Kubectl(kubectl_binary(), kubeconfig), kubeconfig, nodes[0], names[0], images, plane)
        cluster.kubectl.run("wait", "--for=condition=Ready", *[f"node/{n}" for n in names], "--timeout=60s")
        (folder / "helm").mkdir()
        helm_install(extract_helm(folder / "helm"), cluster, RELEASE, OPERATOR_NAMESPACE)
        cluster.nodes = names
        yield cluster
    finally:
        for node in reversed(nodes):
            subprocess.run([NODE, "down", node], check=False, timeout=300)
        subprocess.run([CONTROL_PLANE, "down", plane], check=False, timeout=300)


def namespace_with_volume(cluster: Cluster, folder: Path, name: str) -> Path:
    """Namespace `name` and a ReadWriteMany hostPath volume for the claim `<name>-workspace`."""
    cluster.kubectl.run("create", "namespace", name)
    volume = folder / f"{name}-volume"
    volume.mkdir()
    hostpath_volume(cluster, volume, name, f"{name}-workspace", access_modes=("ReadWriteMany",))
    return volume


def pipeline(cluster: Cluster, name: str, stages: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "refinery.dev/v1alpha1", "kind": "TrainingPipeline",
            "metadata": {"name": name, "namespace": name},
            "spec": {"image": cluster.image("trainer-cpu"), "imagePullPolicy": "Never",
                     "storage": {"claim": {"size": "1Gi", "accessModes": ["ReadWriteMany"]}}, "stages": stages}}


def stage_status(cluster: Cluster, name: str) -> dict[str, Any]:
    status = cluster.get("tp", name, "-n", name).get("status", {})
    return {**(status.get("stages") or [{}])[0], "pipeline": status.get("phase")}


def wait_for(check, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return value


def metrics_log(volume: Path, name: str, stage: str, attempt: int) -> list[dict[str, Any]]:
    """The rank-0 metrics.jsonl of one attempt (one JSON object per training log, with `time`)."""
    path = volume / name / name / stage / f"attempt-{attempt}" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def rank_pod(cluster: Cluster, namespace: str, job: str, index: str) -> dict[str, Any] | None:
    """The running pod of `job`'s completion index `index`, or None."""
    for pod in cluster.get("pods", "-n", namespace, "-l", f"job-name={job}")["items"]:
        state = (pod["status"].get("containerStatuses") or [{}])[0].get("state") or {}
        if "running" in state and not pod["metadata"].get("deletionTimestamp") and \
                pod["metadata"]["annotations"].get("batch.kubernetes.io/job-completion-index") == index:
            return pod
    return None
