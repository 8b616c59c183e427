"""The operator harness, importable outside pytest (tests/operator/conftest.py and benchmarks/).

- `RESOURCES`, `serve_emulator()`: kmock's Kubernetes emulator on loopback with our kinds;
- `write_kubeconfig()`: a kubeconfig pointing at it (kopf's login, `k8s.Cluster`, stage pods);
- `operator_in_thread()`: the real kopf operator in its own thread and loop;
- `run_operator()`: the same, blocking, for a separate process (`python -m tests.operator.harness
  operator KUBECONFIG`), so a benchmark can measure the operator's own memory;
- `stored`, `stored_all`, `create_pipeline`, `wait_for`, `with_server_fields`.

`IndexedEmulator` is kmock's emulator with two things a real API server does and kmock 0.8 does
not (used by the benchmarks, not by the tests): label selectors filter lists (kmock returns every
object of the kind), and fetch/create/list/patch/delete find objects through an index instead
of scanning every stored object (kmock scans them all on each request, which makes 1,000 pipelines a
benchmark of the emulator). It also routes requests without walking the request history
(`route_without_history`) and keeps only the last `HISTORY` requests.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kmock
import kopf

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "default"
VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}
RESOURCES = {
    "refinery.dev/v1alpha1/trainingpipelines": kmock.ResourceInfo(
        kind="TrainingPipeline", singular="trainingpipeline", namespaced=True, shortnames={"tp"},
        subresources={"status"}, verbs=VERBS),
    "batch/v1/jobs": kmock.ResourceInfo(kind="Job", singular="job", namespaced=True, subresources={"status"}, verbs=VERBS),
    "v1/configmaps": kmock.ResourceInfo(kind="ConfigMap", singular="configmap", namespaced=True, verbs=VERBS),
    # Watched by the operator (disruptions). The test kubelet writes Job status only, no pods, so the
    # emulator serves none: disruptions here come from the Job's podFailurePolicy condition.
    "v1/pods": kmock.ResourceInfo(kind="Pod", singular="pod", namespaced=True, subresources={"status"}, verbs=VERBS),
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
users: [{{name: kmock, user: {{token: {token}}}}}]
contexts: [{{name: kmock, context: {{cluster: kmock, user: kmock, namespace: {namespace}}}}}]
current-context: kmock
"""


def write_kubeconfig(path: Path, server: str, token: str = "test-token") -> Path:
    path.write_text(KUBECONFIG.format(server=server, namespace=NAMESPACE, token=token))
    return path


class IndexedEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus label-selector filtering and indexed look-ups (see the module docstring)."""

    HISTORY = 512  # requests kept for assertions (kmock keeps them all)

    async def _handle(self, request):  # noqa: ANN001 - kmock's types
        try:
            return await super()._handle(request)
        finally:
            if len(self._requests) > 2 * self.HISTORY:
                del self._requests[: -self.HISTORY]

    @staticmethod
    def route_without_history() -> None:
        """kmock routes a request by `request in reaction_source`, which walks every request served
        so far (quadratic in a long run). For the plain filters and priorities that the emulator's
        own reactions use, whether a new request belongs is just its criteria: answer that
        directly. Anything else keeps kmock's exact answer. Process-wide: benchmarks only."""
        from kmock._internal import dsl

        def sees(view, request) -> bool:  # noqa: ANN001
            if isinstance(view, dsl.Root):
                return True
            if type(view) is dsl.Filter:
                return bool(view.criteria(request)) and sees(view._source, request)
            if type(view) is dsl.Priority:
                return sees(view._source, request)
            return any(r is request for r in view)

        dsl.Filter.__contains__ = sees
        dsl.Priority.__contains__ = sees

    async def _serve_list(self, request):  # noqa: ANN001 - kmock's types
        if request.resource is None or request.namespace is None:
            return await super()._serve_list(request)
        wanted = dict(part.split("=", 1) for part in (request.params.get("labelSelector") or "").split(",") if "=" in part)
        items = []
        async with self._lock:
            for name in self._names(request.resource, request.namespace):
                obj = self._objects[request.resource, request.namespace, name]
                if obj.deleted:
                    continue
                labels = (obj.raw.get("metadata") or {}).get("labels") or {}
                if all(labels.get(k) == v for k, v in wanted.items()):
                    items.append(obj.raw)
        return {"metadata": {"resourceVersion": "..."}, "items": items}

    async def _serve_fetch(self, request):  # noqa: ANN001
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            obj = self._objects[key] if key in self._objects else None
        if obj is None or obj.deleted:
            raise kmock.KubernetesObjectNotFoundError()
        return obj.raw

    async def _serve_create(self, request):  # noqa: ANN001
        meta = request.data.get("metadata", {})
        key = (request.resource, request.namespace or meta.get("namespace"), request.name or meta.get("name"))
        async with self._lock:
            self._names(key[0], key[1]).add(key[2])
            return self._objects[key].raw

    async def _serve_update(self, request):  # noqa: ANN001 - applied in kmock's _handle; only the answer here
        return await self._last_of(request)

    async def _serve_delete(self, request):  # noqa: ANN001 - as kmock: the last state, even if just removed
        return await self._last_of(request)

    async def _last_of(self, request):  # noqa: ANN001
        async with self._lock:
            return self._objects[request.resource, request.namespace, request.name].last.raw

    def _names(self, resource, namespace) -> set[str]:  # noqa: ANN001
        index = self.__dict__.setdefault("_refinery_index", collections.defaultdict(set))
        return index[resource, namespace]


@contextlib.asynccontextmanager
async def serve_emulator(emulator_class: type[kmock.KubernetesEmulator] = kmock.KubernetesEmulator
                         ) -> AsyncIterator[kmock.KubernetesEmulator]:
    if issubclass(emulator_class, IndexedEmulator):
        IndexedEmulator.route_without_history()
    async with emulator_class() as api, kmock.Server(api):
        for key, info in RESOURCES.items():
            api.resources[key] = info
        yield api


def server_url(emulator: kmock.KubernetesEmulator) -> str:
    return str(emulator.url).rstrip("/")


def operator_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # kmock 0.8 answers GET /api/v1/namespaces with a 500 (it parses "namespaces" as the
    # namespace prefix of a path): kopf must not list/watch namespaces and CRDs, it takes
    # the namespace given. (A real operator with a fixed namespace list loses nothing.)
    settings.scanning.disabled = True
    return settings


def run_operator(kubeconfig: Path, stop: threading.Event | None = None, ready: threading.Event | None = None) -> None:
    """The real operator (handlers registered by importing refinery_operator.handlers), blocking."""
    import kubernetes.config.kube_config

    import refinery_operator.handlers  # noqa: F401 - registers the handlers in kopf's default registry
    from refinery_operator.k8s import Cluster

    kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(kubeconfig)  # kopf's login reads it
    memo = kopf.Memo(cluster=Cluster.from_environment(str(kubeconfig)), namespaces=[NAMESPACE])
    asyncio.run(kopf.operator(namespaces=[NAMESPACE], standalone=True, stop_flag=stop, ready_flag=ready,
                              memo=memo, settings=operator_settings()))


@contextlib.asynccontextmanager
async def operator_in_thread(kubeconfig: Path) -> AsyncIterator[threading.Thread]:
    """The real kopf operator in its own thread and loop, like a separate operator process: it
    must not share tasks with the emulator and the kubelet (on exit, kopf cancels every task
    created while it ran)."""
    stop, ready = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def operate() -> None:
        try:
            run_operator(kubeconfig, stop, ready)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
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


@contextlib.asynccontextmanager
async def operator_in_process(kubeconfig: Path, log: Path) -> AsyncIterator[subprocess.Popen]:
    """The real kopf operator as its own OS process (as in a cluster: its own interpreter and
    GIL, not sharing a CPU-bound loop with the emulator), stopped with SIGTERM like a pod."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(REPO)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "tests.operator.harness", "operator", str(kubeconfig)],
                                   cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.terminate()  # kopf stops on SIGTERM
        try:
            await asyncio.to_thread(process.wait, 30)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait, 10)


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


async def create_pipeline(cluster, manifest: dict[str, Any]) -> dict[str, Any]:  # noqa: ANN001 - k8s.Cluster
    from refinery_operator.k8s import PIPELINES

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


if __name__ == "__main__" and sys.argv[1:2] == ["operator"]:
    import logging

    logging.basicConfig(level=logging.WARNING)
    run_operator(Path(sys.argv[2]))
