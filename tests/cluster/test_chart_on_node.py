"""The chart installed by the real helm, its operator Deployment run by a real kubelet from the
image built from the Dockerfile: probes pass, the chart's securityContext is what the runtime
enforces (uid, read-only root filesystem, no capabilities), /metrics is served — in both modes."""

from __future__ import annotations

import subprocess
import urllib.request
from typing import Any

from .conftest import OPERATOR_NAMESPACE, RELEASE, Cluster, helm_install


def operator_pod(cluster: Cluster, namespace: str, release: str) -> dict[str, Any]:
    pods = cluster.get("pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}")["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return pods[0]


def exec_in(cluster: Cluster, pod: dict[str, Any], *command: str) -> subprocess.CompletedProcess:
    return cluster.kubectl.run("exec", "-n", pod["metadata"]["namespace"], pod["metadata"]["name"], "--", *command,
                               check=False)


def assert_runs_as_the_chart_says(cluster: Cluster, namespace: str, release: str) -> dict[str, Any]:
    deployment = cluster.get("deployment", "-n", namespace, release)
    assert deployment["status"].get("readyReplicas") == 1, deployment["status"]
    pod = operator_pod(cluster, namespace, release)
    assert pod["spec"]["nodeName"] == cluster.node_name
    [container] = pod["status"]["containerStatuses"]
    assert container["ready"] and container["restartCount"] == 0, container
    assert container["image"].endswith(cluster.image("operator").split("/", 1)[1])
    spec = pod["spec"]["containers"][0]
    assert spec["livenessProbe"]["httpGet"]["path"] == spec["readinessProbe"]["httpGet"]["path"] == "/healthz"

    # What the runtime enforces, seen from inside the container (not the pod spec read back).
    assert exec_in(cluster, pod, "id").stdout.split() == ["uid=10001(refinery)", "gid=10001(refinery)", "groups=10001(refinery)"]
    readonly = exec_in(cluster, pod, "touch", "/opt/venv/probe")
    assert readonly.returncode != 0 and "Read-only file system" in readonly.stderr
    capabilities = dict(line.split(":\t") for line in exec_in(cluster, pod, "cat", "/proc/1/status").stdout.splitlines()
                        if line.startswith("Cap"))
    assert capabilities["CapEff"] == capabilities["CapPrm"] == "0000000000000000", capabilities
    assert exec_in(cluster, pod, "sh", "-c", "echo ok > /tmp/probe && cat /tmp/probe").stdout.strip() == "ok"

    # The kubelet's probes reach /healthz on the pod's IP; so does anything on the node's bridge.
    ip = pod["status"]["podIP"]
    metrics = urllib.request.urlopen(f"http://{ip}:8000/metrics", timeout=10).read().decode()
    assert "# TYPE refinery_status_conflicts_total counter" in metrics
    assert urllib.request.urlopen(f"http://{ip}:8080/healthz", timeout=10).status == 200
    return pod


def test_all_namespaces_mode_deployment_is_ready_non_root_and_serves_metrics(cluster: Cluster, operator_release):
    pod = assert_runs_as_the_chart_says(cluster, OPERATOR_NAMESPACE, RELEASE)
    assert "--all-namespaces" in pod["spec"]["containers"][0]["args"]
    reasons = [event.split(":")[0] for event in cluster.events(OPERATOR_NAMESPACE, pod["metadata"]["name"])]
    print(f"\nchart (all namespaces): helm install --wait {operator_release['seconds']:.1f} s; pod events: {reasons}")


def test_watch_namespace_mode_deployment_is_ready_with_a_role_only(cluster: Cluster, helm, operator_release):
    """A second release beside the first: its own namespace, a Role instead of a ClusterRole for
    the pipelines, the CRD left to the first release (crds.install=false)."""
    namespace, release = "ml-team", "refinery-ml"
    seconds = helm_install(helm, cluster, release, namespace, watchNamespace=namespace, **{"crds.install": "false"})
    pod = assert_runs_as_the_chart_says(cluster, namespace, release)
    assert f"--namespace={namespace}" in pod["spec"]["containers"][0]["args"]
    assert cluster.get("role", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}")["items"]
    logs = cluster.kubectl.run("logs", "-n", namespace, pod["metadata"]["name"]).stdout
    assert "Forbidden" not in logs and "403" not in logs, logs[-3000:]
    print(f"\nchart (watchNamespace={namespace}): helm install --wait {seconds:.1f} s")
    subprocess.run([helm, "uninstall", release, "--namespace", namespace, "--wait"], check=True, capture_output=True,
                   env={"KUBECONFIG": str(cluster.kubeconfig), "HOME": str(helm.parent), "PATH": "/usr/bin:/bin"})
