"""Fixtures for the operator against kmock's Kubernetes emulator.

The emulator is served on loopback; a kubeconfig points everything at it — kopf's login, the
operator's `k8s.Cluster`, and the stage processes' progress reporter — exactly as they would
point at a real API server.

Where kmock is not a real API server (checked in kmock 0.8; the tests do not pretend):
- label selectors are ignored on list and watch: `k8s.Cluster.list_labelled` filters locally
  too, and kopf filters handler labels client-side anyway;
- no resourceVersion (lists say "..."), no uid, no generation, no creationTimestamp: the tests
  give each pipeline a uid themselves (owner references need one); `observedGeneration` stays
  unset;
- no status subresource isolation: a PATCH to `/status` merges into the whole object (and a
  PATCH to the object could change the status); no schema, no defaulting, no CEL: an invalid
  manifest is stored as sent, so the operator's own validation is what the test exercises;
- no garbage collection: ownerReferences are checked, not acted on; no Job controller, no
  kubelet: `kubelet.py` plays both; patches are JSON merge patches whatever the content type
  (strategic merge of lists is not emulated).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kmock
import kubernetes.config.kube_config
import kopf
import pytest
import pytest_asyncio

import refinery_operator.handlers  # noqa: F401 - registers the handlers in kopf's default registry
from refinery_operator.k8s import PIPELINES, Cluster

from .kubelet import Kubelet

NAMESPACE = "default"
VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}
RESOURCES = {
    "refinery.dev/v1alpha1/trainingpipelines": kmock.ResourceInfo(
        kind="TrainingPipeline", singular="trainingpipeline", namespaced=True, shortnames={"tp"},
        subresources={"status"}, verbs=VERBS),
    "batch/v1/jobs": kmock.ResourceInfo(kind="Job", singular="job", namespaced=True, subresources={"status"}, verbs=VERBS),
    "v1/configmaps": kmock.ResourceInfo(kind="ConfigMap", singular="configmap", namespaced=True, verbs=VERBS),
    "v1/persistentvolumeclaims": kmock.ResourceInfo(kind="PersistentVolumeClaim", namespaced=True, verbs=VERBS),
    "v1/services": kmock.ResourceInfo(kind="Service", namespaced=True, verbs=VERBS),  # headless, multi-node stages
    "v1/serviceaccounts": kmock.ResourceInfo(kind="ServiceAccount", namespaced=True, verbs=VERBS),
    "v1/events": kmock.ResourceInfo(kind="Event", namespaced=True, verbs=VERBS),
    "rbac.authorization.k8s.io/v1/roles": kmock.ResourceInfo(kind="Role", namespaced=True, verbs=VERBS),
    "rbac.authorization.k8s.io/v1/rolebindings": kmock.ResourceInfo(kind="RoleBinding", namespaced=True, verbs=VERBS),
    # kopf waits for these two in discovery before it watches anything in a namespace.
    "v1/namespaces": kmock.ResourceInfo(kind="Namespace", singular="namespace", namespaced=False, verbs=VERBS),
    "apiextensions.k8s.io/v1/customresourcedefinitions": kmock.ResourceInfo(
        kind="CustomResourceDefinition", singular="customresourcedefinition", namespaced=False, verbs=VERBS),
}

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{{name: kmock, cluster: {{server: "{server}"}}}}]
users: [{{name: kmock, user: {{token: test-token}}}}]
contexts: [{{name: kmock, context: {{cluster: kmock, user: kmock, namespace: {namespace}}}}}]
current-context: kmock
"""


@pytest_asyncio.fixture()
async def emulator() -> AsyncIterator[kmock.KubernetesEmulator]:
    async with kmock.KubernetesEmulator() as api, kmock.Server(api):
        for key, info in RESOURCES.items():
            api.resources[key] = info
        yield api


@pytest.fixture()
def server_url(emulator: kmock.KubernetesEmulator) -> str:
    return str(emulator.url).rstrip("/")


@pytest.fixture()
def kubeconfig(tmp_path: Path, server_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG.format(server=server_url, namespace=NAMESPACE))
    monkeypatch.setenv("KUBECONFIG", str(path))  # for the stage processes, like a workstation's
    # The client reads $KUBECONFIG once, when imported; kopf's login uses that default.
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return path


@pytest.fixture()
def cluster(kubeconfig: Path) -> Cluster:
    """The test's own API client (the same class the operator uses)."""
    api = Cluster.from_environment(str(kubeconfig))
    yield api
    api.close()


@pytest.fixture()
def start_operator(kubeconfig: Path) -> Callable[[], Any]:
    """`async with start_operator(): ...` runs the real kopf operator in its own thread and loop.

    Not in the test's loop: like a real operator process, it must not share tasks with the
    emulator and the kubelet (on exit, kopf cancels every task created while it ran).
    """

    @contextlib.asynccontextmanager
    async def running() -> AsyncIterator[threading.Thread]:
        stop, ready = threading.Event(), threading.Event()
        memo = kopf.Memo(cluster=Cluster.from_environment(str(kubeconfig)))
        settings = kopf.OperatorSettings()
        # kmock 0.8 answers GET /api/v1/namespaces with a 500 (it parses "namespaces" as the
        # namespace prefix of a path): kopf must not list/watch namespaces and CRDs, it takes
        # the namespace given. (A real operator with a fixed namespace list loses nothing.)
        settings.scanning.disabled = True
        errors: list[BaseException] = []

        def operate() -> None:
            try:
                asyncio.run(kopf.operator(namespaces=[NAMESPACE], standalone=True, stop_flag=stop, ready_flag=ready,
                                          memo=memo, settings=settings))
            except BaseException as e:  # noqa: BLE001 - re-raised in the test
                errors.append(e)

        thread = threading.Thread(target=operate, name="operator", daemon=True)
        thread.start()
        assert await asyncio.to_thread(ready.wait, 15), "the operator did not start"
        try:
            yield thread
        finally:
            stop.set()
            await asyncio.to_thread(thread.join, 20)
            assert not thread.is_alive(), "the operator did not stop"
        if errors:
            raise errors[0]

    return running


@pytest_asyncio.fixture()
async def kubelet(server_url: str, kubeconfig: Path, tmp_path: Path) -> AsyncIterator[Kubelet]:
    node = Kubelet(server_url, kubeconfig, tmp_path / "node", NAMESPACE)
    task = asyncio.create_task(node.run())
    yield node
    if task.done():  # the kubelet died under the test: show why
        task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# ----------------------------------------------------------------------------------------------
# helpers


def with_server_fields(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a real API server adds on creation and kmock does not: a uid (owner references need
    it) and a resourceVersion (kopf's JSON patches `test` it). kmock never bumps the version, so
    optimistic concurrency is not exercised here."""
    meta = {"namespace": NAMESPACE, **manifest["metadata"], "uid": str(uuid.uuid4()), "resourceVersion": "1"}
    return {**manifest, "metadata": meta}


def stored(emulator: kmock.KubernetesEmulator, resource: str, name: str) -> dict[str, Any] | None:
    """The emulator's current version of an object (read in-process, no API call)."""
    key = (kmock.resource(resource), NAMESPACE, name)
    if key not in emulator.objects or emulator.objects[key].deleted:
        return None
    return emulator.objects[key].raw


def stored_all(emulator: kmock.KubernetesEmulator, resource: str) -> dict[str, dict[str, Any]]:
    wanted = kmock.resource(resource)
    return {name: obj.raw for (res, ns, name), obj in emulator.objects.items()
            if res == wanted and ns == NAMESPACE and not obj.deleted}


async def create_pipeline(cluster: Cluster, manifest: dict[str, Any]) -> dict[str, Any]:
    return await cluster.request("POST", PIPELINES.path(NAMESPACE), body=with_server_fields(manifest))


async def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll `predicate` until truthy; bounded in time (shared CPUs: no busy loops)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)
