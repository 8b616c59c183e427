"""A test node for a real API server: the part of a kubelet (and of a scheduler) the tests need.

The control plane has no scheduler and no kubelet, so pods the real job controller creates would
stay Pending. `Node` registers a Node object (renewing its Lease in `kube-node-lease`, so the node
lifecycle controller never marks it unreachable), binds every unscheduled pod to itself (a
`Binding`, as kube-scheduler does) and then, for each pod bound to it:

- runs its (first) container as a local process: `command` + `args` with `$(VAR)` expanded, env
  from `value`, `valueFrom.fieldRef` (name, namespace, uid, labels, annotations, nodeName,
  serviceAccountName, podIP), `configMapKeyRef` and `secretKeyRef`, read from the API as the
  kubelet reads them;
- maps volumes to folders: a PVC -> `<root>/pvc/<namespace>/<claim>` (shared by the pods that
  mount it, like a real volume; the claim need not be bound: there is no PV provisioner; the
  first mount fills it with what the tests' manifests read, `provision_volume` of
  tests/operator/volumes.py, since each pipeline's initializer really checks its inputs), a
  configMap -> its keys as files, an emptyDir -> a folder of the pod, and the projected
  ServiceAccount volume the API server injects -> a token from TokenRequest bound to this pod,
  `ca.crt` and `namespace`. Every path under a mount path in the command, env and mounted YAML
  files is rewritten to its folder (`tests/operator/kubelet.py` does the same for the emulator);
- gives the process a kubeconfig built from that projected token (the pod's own ServiceAccount,
  with exactly its RBAC) — the in-cluster config the client would load needs the fixed path
  /var/run/secrets/..., which a process on this host cannot have; without the projected volume
  the process gets no credentials at all;
- writes pod status through `pods/status`: `Running` with the Ready condition (the job controller
  counts `ready` from it), then `Succeeded`/`Failed` with the container's `terminated` state —
  exit code (128 + signal for a killed process), reason, and the termination message (the file
  the trainer writes at `$REFINERY_TERMINATION_LOG`, standing in for /dev/termination-log; with
  `FallbackToLogsOnError` the log's tail on failure);
- serves each pod's output at the kubelet's log endpoint (podlogs.py), so `kubectl logs` and
  `refinery logs` work through the API server as on a cluster;
- a pod given a deletionTimestamp (Job suspended, `activeDeadlineSeconds`, the Job deleted) gets
  SIGTERM, SIGKILL after its grace period, its final status, then the kubelet's final DELETE.

The real job controller then writes the Jobs' status — podFailurePolicy, backoffLimit, Indexed
completions, suspend — and the garbage collector deletes what an owner took with it.

What it does not do: resource requests, taints, affinity and node selectors are not checked (no
scheduler), no image is pulled, securityContext is ignored (the process runs as the test user),
no network namespace (pods share the host's loopback), no probes, one container per pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from refinery_operator.k8s import MERGE_PATCH, Cluster, Resource
from tests.operator.kubelet import expand, kill_pod, map_path, map_yaml_paths
from tests.operator.volumes import provision_volume

from .podlogs import PodLogServer

PODS = Resource("", "v1", "pods")
NODES = Resource("", "v1", "nodes")
LEASES = Resource("coordination.k8s.io", "v1", "leases")
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
TERMINATION_MESSAGE_LIMIT = 4096
SYNC_S = 0.2  # how often pods are listed (a kubelet's sync loop; no watch to re-establish)
HEARTBEAT_S = 10.0
log = logging.getLogger(__name__)


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class RunningPod:
    namespace: str
    name: str
    uid: str
    folder: Path
    process: subprocess.Popen | None = None
    started_at: str = ""
    exit_code: int | None = None
    terminating_since: float | None = None
    grace_s: float = 30.0
    reported: bool = False  # the final status is written
    command: list[str] = field(default_factory=list)

    @property
    def log(self) -> str:
        path = self.folder / "log.txt"
        return path.read_text(errors="replace") if path.exists() else ""


class Node:
    def __init__(self, cluster: Cluster, server: str, ca_file: Path, root: Path, name: str = "refinery-test-node",
                 namespaces: list[str] | None = None, command_map: dict[str, list[str]] | None = None,
                 provision: Callable[[Path], None] | None = provision_volume) -> None:
        self.cluster, self.server, self.ca_file, self.root, self.name = cluster, server, ca_file, root, name
        self.provision = provision  # fills a claim's folder the first time a pod mounts it
        self._provisioned: set[tuple[str, str]] = set()
        self.namespaces: list[str | None] = list(namespaces) if namespaces else [None]  # None: every namespace
        self.command_map = command_map or {}  # e.g. {"refinery-train": [python, fake_stage.py]}
        self.pods: dict[str, RunningPod] = {}  # uid -> pod
        self.started: list[str] = []  # pod names, in start order
        self.errors = 0  # API errors seen (the API server restarting)

    def oom_kill(self, pod_prefix: str) -> str:
        """SIGKILL the running pod whose name starts with `pod_prefix`, as the kernel's OOM killer
        ends a container: exit code 137, reason OOMKilled. Returns the pod's name."""
        pod = next(p for p in self.pods.values() if p.name.startswith(pod_prefix) and p.exit_code is None)
        kill_pod(pod)  # type: ignore[arg-type]
        return pod.name

    def claim_dir(self, namespace: str, claim: str) -> Path:
        return self.root / "pvc" / namespace / claim

    async def run(self) -> None:
        self.log_server = PodLogServer(self._pod_log, self.root / "kubelet")  # `kubectl logs` through the API server
        await self._register()
        last_beat = 0.0
        try:
            while True:
                try:
                    if time.monotonic() - last_beat > HEARTBEAT_S:
                        await self._heartbeat()
                        last_beat = time.monotonic()
                    await self._sync()
                except (ApiException, HTTPError) as e:  # the API server is down or restarting: try again
                    self.errors += 1
                    self._log(f"sync failed: {type(e).__name__}: {str(e)[:300]}")
                await asyncio.sleep(SYNC_S)
        finally:
            self.log_server.stop()
            for pod in self.pods.values():
                if pod.process is not None:
                    kill_pod(pod)  # type: ignore[arg-type] - same fields as kubelet.Pod

    def _pod_log(self, namespace: str, name: str) -> tuple[Path, Callable[[], bool]] | None:
        """A pod's log file and whether its process has ended (PodLogServer's lookup; another thread)."""
        pod = next((p for p in list(self.pods.values()) if (p.namespace, p.name) == (namespace, name)), None)
        if pod is None or not (pod.folder / "log.txt").exists():
            return None
        return pod.folder / "log.txt", lambda: pod.process is None or pod.process.poll() is not None

    def _log(self, line: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "node.log", "a") as out:
            out.write(f"{now()} {line}\n")

    # -- the node object ------------------------------------------------------------------------

    async def _register(self) -> None:
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.name, "labels": {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux"}}}
        await self._create_node(node)
        await self._heartbeat()

    async def _create_node(self, node: dict[str, Any]) -> None:
        try:
            await self.cluster.request("POST", NODES.path(None), body=node)
        except ApiException as e:
            if e.status != 409:
                raise

    async def _heartbeat(self) -> None:
        stamp = now()
        capacity = {"cpu": "64", "memory": "256Gi", "pods": "2000", "nvidia.com/gpu": "8", "ephemeral-storage": "1Ti"}
        status = {"capacity": capacity, "allocatable": capacity,
                  "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.name}],
                  "daemonEndpoints": {"kubeletEndpoint": {"Port": self.log_server.port}},
                  "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test node",
                                  "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}],
                  "nodeInfo": {"kubeletVersion": "v1.36.2-test", "operatingSystem": "linux", "architecture": "amd64",
                               "containerRuntimeVersion": "test://1", "kernelVersion": "", "osImage": "", "kubeProxyVersion": "",
                               "machineID": "", "systemUUID": "", "bootID": ""}}
        await self.cluster.request("PATCH", NODES.path(None) + f"/{self.name}/status", body={"status": status},
                                   content_type=MERGE_PATCH)
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": self.name, "namespace": "kube-node-lease"},
                 "spec": {"holderIdentity": self.name, "leaseDurationSeconds": 40,
                          "renewTime": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}}
        if await self.cluster.patch(LEASES, "kube-node-lease", self.name, {"spec": lease["spec"]}) is None:
            await self.cluster.request("POST", LEASES.path("kube-node-lease"), body=lease)

    # -- the sync loop --------------------------------------------------------------------------

    async def _sync(self) -> None:
        unbound, mine = [], []
        for namespace in self.namespaces:
            unbound += (await self.cluster.request("GET", PODS.path(namespace), query=[("fieldSelector", "spec.nodeName=")])
                        ).get("items") or []
        for pod in unbound:
            await self._bind(pod)
        for namespace in self.namespaces:
            mine += (await self.cluster.request("GET", PODS.path(namespace), query=[("fieldSelector", f"spec.nodeName={self.name}")])
                     ).get("items") or []
        seen = set()
        for pod in mine:
            seen.add(pod["metadata"]["uid"])
            await self._sync_pod(pod)
        for uid in [uid for uid in self.pods if uid not in seen]:  # deleted by the API (grace 0, or GC)
            gone = self.pods.pop(uid)
            kill_pod(gone)  # type: ignore[arg-type]

    async def _bind(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            return
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": self.name}}
        try:
            await self.cluster.request("POST", PODS.path(meta["namespace"], meta["name"], "binding"), body=binding)
        except ApiException as e:
            if e.status not in (404, 409):  # gone, or bound meanwhile
                raise

    async def _sync_pod(self, pod: dict[str, Any]) -> None:
        meta, status = pod["metadata"], pod.get("status") or {}
        uid = meta["uid"]
        running = self.pods.get(uid)
        terminal = status.get("phase") in ("Succeeded", "Failed")
        if running is None:
            if terminal or meta.get("deletionTimestamp"):
                if meta.get("deletionTimestamp"):  # never started here: nothing to stop
                    await self._final_delete(meta)
                return
            running = RunningPod(meta["namespace"], meta["name"], uid, self.root / "pods" / meta["namespace"] / meta["name"])
            self.pods[uid] = running
            await self._start(pod, running)
            await self._write_running(running, pod)
            return
        if running.process is not None and running.exit_code is None:
            code = running.process.poll()
            if code is None and meta.get("deletionTimestamp"):
                self._terminate(running, pod)
                code = running.process.poll()
            if code is not None:
                running.exit_code = 128 - code if code < 0 else code
        if running.exit_code is not None and not running.reported:
            await self._write_terminated(running, pod)
            running.reported = True
            self._log(f"{running.namespace}/{running.name}: exited {running.exit_code}")
        if meta.get("deletionTimestamp") and running.reported:
            await self._final_delete(meta)

    def _terminate(self, running: RunningPod, pod: dict[str, Any]) -> None:
        """SIGTERM once, SIGKILL after the pod's grace period (as the kubelet stops a container)."""
        if running.terminating_since is None:
            running.terminating_since = time.monotonic()
            running.grace_s = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(running.process.pid, signal.SIGTERM)
            self._log(f"{running.namespace}/{running.name}: deleted, SIGTERM (grace {running.grace_s:.0f}s)")
        elif time.monotonic() - running.terminating_since > running.grace_s:
            kill_pod(running)  # type: ignore[arg-type]
            running.process.wait()

    async def _final_delete(self, meta: dict[str, Any]) -> None:
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "preconditions": {"uid": meta["uid"]}}
        try:
            await self.cluster.request("DELETE", PODS.path(meta["namespace"], meta["name"]), body=body)
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    # -- one container --------------------------------------------------------------------------

    async def _start(self, pod: dict[str, Any], running: RunningPod) -> None:
        spec = pod["spec"]
        container = spec["containers"][0]
        running.folder.mkdir(parents=True, exist_ok=True)
        mounts = await self._mount(pod, container, running)
        env = await self._env(pod, container, mounts, running)
        command = [map_path(expand(arg, env), mounts) for arg in container.get("command", []) + container.get("args", [])]
        command = self.command_map.get(command[0], [command[0]]) + command[1:]
        running.command, running.started_at = command, now()
        with open(running.folder / "log.txt", "wb") as out:
            running.process = subprocess.Popen(command, env=env, cwd=running.folder, stdout=out, stderr=subprocess.STDOUT,
                                               start_new_session=True)
        self.started.append(running.name)
        self._log(f"{running.namespace}/{running.name}: started {' '.join(command)}")

    async def _mount(self, pod: dict[str, Any], container: dict[str, Any], running: RunningPod) -> dict[str, Path]:
        namespace = running.namespace
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        mounts: dict[str, Path] = {}
        files: list[tuple[Path, dict[str, str]]] = []
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                host = self.claim_dir(namespace, claim)
                if self.provision is not None and (namespace, claim) not in self._provisioned:
                    self._provisioned.add((namespace, claim))
                    self.provision(host)
            else:
                host = running.folder / "volumes" / mount["name"]
            host.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = host
            if "configMap" in volume:
                files.append((host, await self._configmap_data(namespace, volume["configMap"]["name"])))
            elif "projected" in volume:
                files.append((host, await self._projected(pod, volume["projected"])))
        for host, data in files:  # last: YAML paths are mapped through every mount
            for key, text in data.items():
                (host / key).write_text(map_yaml_paths(text, mounts) if key.endswith((".yaml", ".yml")) else text)
        return mounts

    async def _projected(self, pod: dict[str, Any], projected: dict[str, Any]) -> dict[str, str]:
        meta, files = pod["metadata"], {}
        for source in projected.get("sources", []):
            if "serviceAccountToken" in source:
                request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
                    "expirationSeconds": int(source["serviceAccountToken"].get("expirationSeconds", 3600)),
                    "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}}}
                sa = pod["spec"].get("serviceAccountName") or "default"
                answer = await self.cluster.request(
                    "POST", Resource("", "v1", "serviceaccounts").path(meta["namespace"], sa, "token"), body=request)
                files[source["serviceAccountToken"]["path"]] = answer["status"]["token"]
            elif "configMap" in source:
                data = await self._configmap_data(meta["namespace"], source["configMap"]["name"])
                for item in source["configMap"].get("items") or [{"key": k, "path": k} for k in data]:
                    files[item["path"]] = data[item["key"]]
            elif "downwardAPI" in source:
                for item in source["downwardAPI"].get("items", []):
                    files[item["path"]] = field_value(pod, item["fieldRef"]["fieldPath"])
        return files

    async def _env(self, pod: dict[str, Any], container: dict[str, Any], mounts: dict[str, Path],
                   running: RunningPod) -> dict[str, str]:
        env = {k: os.environ[k] for k in ("PATH", "VIRTUAL_ENV", "LANG", "PYTHONPATH") if k in os.environ}
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")  # shared CPUs
        env["REFINERY_TERMINATION_LOG"] = str(running.folder / "termination-log")
        if SA_MOUNT in mounts:  # the pod's own identity, from its projected token
            env["KUBECONFIG"] = str(self._pod_kubeconfig(running, mounts[SA_MOUNT]))
        for var in container.get("env", []):
            source = var.get("valueFrom") or {}
            if "value" in var:
                env[var["name"]] = map_path(expand(var["value"], env), mounts)
            elif "fieldRef" in source:
                env[var["name"]] = field_value(pod, source["fieldRef"]["fieldPath"])
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                env[var["name"]] = (await self._configmap_data(running.namespace, ref["name"]))[ref["key"]]
            elif "secretKeyRef" in source:
                import base64

                ref = source["secretKeyRef"]
                secret = await self.cluster.request("GET", Resource("", "v1", "secrets").path(running.namespace, ref["name"]))
                env[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        return env

    def _pod_kubeconfig(self, running: RunningPod, secrets: Path) -> Path:
        path = running.folder / "kubeconfig"
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters: [{{name: c, cluster: {{server: '{self.server}', certificate-authority: '{self.ca_file}'}}}}]\n"
            f"users: [{{name: pod, user: {{tokenFile: '{secrets / 'token'}'}}}}]\n"
            f"contexts: [{{name: pod, context: {{cluster: c, user: pod, namespace: {running.namespace}}}}}]\n"
            "current-context: pod\n")
        return path

    async def _configmap_data(self, namespace: str, name: str) -> dict[str, str]:
        return (await self.cluster.request("GET", Resource("", "v1", "configmaps").path(namespace, name))).get("data") or {}

    # -- pod status -----------------------------------------------------------------------------

    async def _write_running(self, running: RunningPod, pod: dict[str, Any]) -> None:
        stamp = running.started_at
        container = pod["spec"]["containers"][0]
        conditions = [condition(t, "True", stamp) for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
        status = {"phase": "Running", "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
                  "startTime": stamp, "conditions": conditions,
                  "containerStatuses": [{"name": container["name"], "image": container.get("image", ""), "imageID": "",
                                         "containerID": f"test://{running.process.pid}", "ready": True, "started": True,
                                         "restartCount": 0, "state": {"running": {"startedAt": stamp}}}]}
        await self._patch_status(running, status)

    async def _write_terminated(self, running: RunningPod, pod: dict[str, Any]) -> None:
        stamp = now()
        container = pod["spec"]["containers"][0]
        code = running.exit_code
        reason = "Completed" if code == 0 else ("OOMKilled" if code == 137 and running.terminating_since is None else "Error")
        terminated = {"exitCode": code, "reason": reason, "startedAt": running.started_at, "finishedAt": stamp,
                      "containerID": f"test://{running.process.pid}"}
        message = self._termination_message(running, container)
        if message:
            terminated["message"] = message
        conditions = [condition("PodScheduled", "True", running.started_at), condition("Initialized", "True", running.started_at),
                      condition("ContainersReady", "False", stamp, "PodCompleted"), condition("Ready", "False", stamp, "PodCompleted")]
        status = {"phase": "Succeeded" if code == 0 else "Failed", "conditions": conditions,
                  "containerStatuses": [{"name": container["name"], "image": container.get("image", ""), "imageID": "",
                                         "containerID": terminated["containerID"], "ready": False, "started": False,
                                         "restartCount": 0, "state": {"terminated": terminated}}]}
        await self._patch_status(running, status)

    @staticmethod
    def _termination_message(running: RunningPod, container: dict[str, Any]) -> str:
        path = running.folder / "termination-log"
        text = path.read_text(errors="replace") if path.exists() else ""
        if not text and running.exit_code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            text = "\n".join(running.log.splitlines()[-80:])
        return text[-TERMINATION_MESSAGE_LIMIT:]

    async def _patch_status(self, running: RunningPod, status: dict[str, Any]) -> None:
        try:
            await self.cluster.request("PATCH", PODS.path(running.namespace, running.name, "status"), body={"status": status},
                                       content_type=MERGE_PATCH)
        except ApiException as e:
            if e.status != 404:
                raise


def field_value(pod: dict[str, Any], path: str) -> str:
    """A downward-API field of the pod: `metadata.name`, `metadata.labels['x']`, `spec.nodeName` …"""
    meta, spec = pod["metadata"], pod["spec"]
    keyed = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if keyed:
        return (meta.get(keyed.group(1)) or {}).get(keyed.group(2), "")
    simple = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta["uid"],
              "spec.nodeName": spec.get("nodeName", ""), "spec.serviceAccountName": spec.get("serviceAccountName", ""),
              "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1"}
    return simple[path]


def condition(type_: str, status: str, stamp: str, reason: str | None = None) -> dict[str, Any]:
    found = {"type": type_, "status": status, "lastProbeTime": None, "lastTransitionTime": stamp}
    if reason:
        found["reason"] = reason
    return found
