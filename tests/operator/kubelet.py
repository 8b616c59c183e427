"""A test "kubelet" (plus the Job controller's status bookkeeping) for the kmock emulator.

It watches Jobs in the emulator and, for each new one, runs its pod as a local process:

- the container's command and env (`valueFrom.fieldRef` for the pod's name and namespace; Secret and
  ConfigMap keys through `valueFrom` and `envFrom`, read from the emulator as the kubelet would);
- volumes mapped to folders of a temp dir: each PVC -> `<root>/pvc/<claimName>` (shared by all
  pods, like a real volume), each emptyDir -> a folder of the pod, each configMap -> its keys
  written as files (fetched from the emulator, as the kubelet would);
- paths: every string in the command, the env and the mounted YAML files (the StageRun) that
  lies under a mount path (e.g. `/workspace/...`, `/etc/refinery/stage.yaml`) is rewritten to
  the mapped folder. The trainer itself runs unmodified — no path-mapping env var.

Indexed Jobs (multi-node stages): one process per index, with `JOB_COMPLETION_INDEX` from the
pod's index annotation (declared env, as the builders do), `$(VAR)` references in the command
expanded from the container's env as the real kubelet does, and every pod DNS name
`<job>-<index>.<subdomain>` rewritten to 127.0.0.1 in the command and env — the part cluster DNS
plays (a headless Service resolving a pod's hostname to its IP), since all "pods" share this host.
The first pod to fail fails the Job and the others are killed (backoffLimit 0).

It then writes the Job's status back the way the Job controller does (`active`/`ready`/
`startTime` while running; `succeeded` + `SuccessCriteriaMet`/`Complete`, or `failed` +
`FailureTarget`/`Failed` with the controller's reasons when the process exits). `evict()`
kills a pod and fails its Job the way a DisruptionTarget pod-failure-policy rule does.

The Job controller's answers to the Job's spec: `spec.suspend` — no pod while suspended (a Job
created suspended, as with Kueue, starts when it is unsuspended; a running one has its pods
terminated with their grace period and shows Suspended, keeping its startTime; resumed, it shows
Suspended False / JobResumed and a new startTime); `activeDeadlineSeconds` — the pods are
terminated and the Job fails with DeadlineExceeded.

Foreground deletion: kmock deletes an object at once unless it has a finalizer, while a real API
server keeps a Job deleted with `propagationPolicy: Foreground` (with a deletionTimestamp and the
`foregroundDeletion` finalizer) until its pods are gone. So the kubelet puts that finalizer on
every Job it sees (earlier than the API server would: kmock cannot add it on DELETE); when a Job
gets a deletionTimestamp it terminates the Job's pods with their grace period (SIGTERM: the
trainer saves a checkpoint), sets `active` to 0, then removes the finalizer and kmock deletes the
Job. A Job created again under the same name afterwards gets a new pod.

`hold`: names of Jobs whose pods never become ready, like a pod stuck in ImagePullBackOff or
unschedulable: the Job gets `startTime` and `active` but `ready` stays 0 and no process runs,
until the Job is suspended, deleted or given an `activeDeadlineSeconds`.

Volumes come provisioned: the first time a pod mounts a claim, its folder gets what the tests'
manifests read (`volumes.provision_volume`: examples/data/ as `data/`, as `kubectl cp` would leave it),
since every pipeline's initializer Job really checks that each input exists and has its columns
before a stage starts. Files a test put there itself are kept; a test can pass `provision=None`.

What it does not do (no scheduler, no node): resource requests (GPUs) are not enforced,
securityContext is ignored (the process runs as the test user), no image is pulled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from .volumes import provision_volume

FOREGROUND_DELETION = "foregroundDeletion"  # the finalizer a foreground deletion puts on the Job

# A quiet watch is restarted (a re-list), as client-go's reflector does when its watch times out.
WATCH_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=30.0)


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Pod:
    job: str
    name: str
    folder: Path
    command: list[str]
    index: int | None = None  # completion index (Indexed Jobs)
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    exit_code: int | None = None
    evicted: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def log(self) -> str:
        path = self.folder / "log.txt"
        return path.read_text(errors="replace") if path.exists() else ""


class Kubelet:
    def __init__(self, server: str, kubeconfig: Path, root: Path, namespace: str = "default",
                 command_map: dict[str, list[str]] | None = None,
                 provision: Callable[[Path], None] | None = provision_volume) -> None:
        self.server = server.rstrip("/")
        self.provision = provision  # fills a claim's folder the first time a pod mounts it
        self._provisioned: set[str] = set()
        self.kubeconfig = kubeconfig
        self.root = root
        self.namespace = namespace
        self.command_map = command_map or {}  # e.g. {"refinery-train": [python, fake_stage.py]}
        self.pods: dict[str, Pod] = {}  # Job name -> its (first) pod
        self.job_pods: dict[str, list[Pod]] = {}  # Job name -> every pod (one per index)
        self.job_specs: dict[str, dict[str, Any]] = {}  # Job name -> its latest spec
        self.hold: set[str] = set()  # Job names whose pods never become ready (see the module docstring)
        self._finalized: set[str] = set()  # Jobs given (or being given) the foregroundDeletion finalizer
        self._deleting: set[str] = set()  # Jobs with a deletionTimestamp, until kmock deletes them
        self._tasks: set[asyncio.Task] = set()
        self._session: aiohttp.ClientSession | None = None

    def claim_dir(self, claim: str) -> Path:
        return self.root / "pvc" / claim

    # ------------------------------------------------------------------------------------------
    # the watch

    async def run(self) -> None:
        self._session = aiohttp.ClientSession()
        url = f"{self.server}/apis/batch/v1/namespaces/{self.namespace}/jobs"
        try:
            while True:  # the emulator's watch streams existing objects first, then changes
                try:
                    async with self._session.get(url, params={"watch": "true"}, timeout=WATCH_TIMEOUT) as resp:
                        async for line in resp.content:
                            if line.strip():
                                self._on_event(json.loads(line))
                except (aiohttp.ClientError, TimeoutError):  # closed, or quiet: watch again (re-lists)
                    await asyncio.sleep(0.1)
        finally:
            await self.stop()
            await self._session.close()

    def _on_event(self, event: dict[str, Any]) -> None:
        job = event.get("object") or {}
        name = (job.get("metadata") or {}).get("name")
        finished = any(c.get("type") in ("Complete", "Failed") for c in (job.get("status") or {}).get("conditions") or [])
        meta = job.get("metadata") or {}
        if name and event.get("type") in ("ADDED", "MODIFIED"):
            self.job_specs[name] = job.get("spec") or {}  # suspend / activeDeadlineSeconds, read by _run_job
        if name and event.get("type") == "DELETED":
            self.job_specs.pop(name, None)
            self._finalized.discard(name)
            self._deleting.discard(name)
            return
        if name and not meta.get("deletionTimestamp") and name not in self._finalized \
                and FOREGROUND_DELETION not in (meta.get("finalizers") or []):
            self._finalized.add(name)
            self._spawn(self._patch_finalizers(name, [*(meta.get("finalizers") or []), FOREGROUND_DELETION]))
        if name and meta.get("deletionTimestamp"):
            if name not in self._deleting:
                self._deleting.add(name)
                pods = self.job_pods.get(name)
                if not pods or pods[0].done.is_set():  # no pod running: nothing to wait for
                    self._spawn(self._release(name))
                # else: _run_job terminates the pods, then releases the Job
            return
        if (job.get("spec") or {}).get("suspend"):
            return  # the Job controller creates no pod for a suspended Job (Kueue: until admitted)
        if event.get("type") in ("ADDED", "MODIFIED") and name and name not in self.pods and not finished:
            spec = job.get("spec") or {}
            if spec.get("completionMode") == "Indexed":
                pods = [Pod(job=name, name=f"{name}-{i}-x7k2p", folder=self.root / "pods" / f"{name}-{i}", command=[], index=i)
                        for i in range(int(spec.get("completions") or 1))]
            else:
                pods = [Pod(job=name, name=f"{name}-x7k2p", folder=self.root / "pods" / name, command=[])]
            self.pods[name], self.job_pods[name] = pods[0], pods
            self._spawn(self._run_job(job, pods))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Kill the pods still running (only the processes this kubelet started, and their children:
        torchrun starts its workers in sessions of their own)."""
        for pods in self.job_pods.values():
            for pod in pods:
                kill_pod(pod)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def evict(self, job: str) -> None:
        """The node goes away under the pod: SIGKILL, then a DisruptionTarget failure."""
        pod = self.pods[job]
        pod.evicted = True
        if pod.process is not None and pod.process.poll() is None:
            os.killpg(pod.process.pid, signal.SIGKILL)
        await pod.done.wait()

    # ------------------------------------------------------------------------------------------
    # one pod

    async def _run_job(self, job: dict[str, Any], pods: list[Pod]) -> None:
        """Start every pod, then wait for all to succeed or for the first failure (which ends the rest).
        A held Job (`hold`) starts no process: its pods stay not ready until the Job is stopped."""
        held = pods[0].job in self.hold
        try:
            for pod in [] if held else pods:
                await self._start_pod(job, pod)
            started = {"active": len(pods), "ready": 0 if held else len(pods), "startTime": now()}
            if any(c.get("type") == "Suspended" and c.get("status") == "True"
                   for c in (job.get("status") or {}).get("conditions") or []):
                # Resumed: the controller flips Suspended with JobResumed and restarts startTime.
                started["conditions"] = [{**condition("Suspended", "JobResumed", "Job resumed", started["startTime"]),
                                          "status": "False"}]
            await self._patch_status(pods[0].job, started)
            while True:  # polled: no asyncio child watcher involved
                codes = [pod.process.poll() for pod in pods if pod.process is not None]
                exited = not held and (all(c is not None for c in codes) or any(c not in (None, 0) for c in codes))
                if exited or any(p.evicted for p in pods):
                    break
                spec = self.job_specs.get(pods[0].job) or {}
                if pods[0].job in self._deleting:  # foreground deletion: the pods go first, then the Job
                    grace = float(spec["template"]["spec"].get("terminationGracePeriodSeconds", 30))
                    await self._terminate(pods, grace)
                    await self._patch_status(pods[0].job, {"active": None, "ready": 0})
                    return
                if spec.get("suspend"):
                    await self._suspend(pods, spec)
                    return
                if spec.get("activeDeadlineSeconds") is not None:
                    await self._deadline_exceeded(pods)
                    return
                await asyncio.sleep(0.1)
            for pod in pods:  # what the Job controller does once the Job failed: delete the other pods
                kill_pod(pod)
                pod.exit_code = pod.process.wait() if pod.process is not None else None
                self._log(f"{pod.name}: exited with {pod.exit_code}")
            failed = next((p for p in pods if p.evicted or p.exit_code != 0), pods[0])
            final = self._final_status(failed)
            if pods[0].index is not None:  # Indexed: the controller counts the indexes that succeeded
                done = [p.index for p in pods if p.exit_code == 0 and not p.evicted]
                final.update(succeeded=len(done), completedIndexes=",".join(map(str, done)) or None)
            await self._patch_status(pods[0].job, final)
            self._log(f"{pods[0].job}: status written")
        finally:
            for pod in pods:
                pod.done.set()
            if pods[0].job in self._deleting:  # no await since done.set(): _on_event cannot release it too
                await self._release(pods[0].job)

    async def _terminate(self, pods: list[Pod], grace_s: float) -> None:
        """SIGTERM, then SIGKILL after the grace period, as the kubelet deletes a pod (a held pod has
        no process: it just goes)."""
        pods = [pod for pod in pods if pod.process is not None]
        for pod in pods:
            if pod.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pod.process.pid, signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + grace_s
        while any(p.process.poll() is None for p in pods) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for pod in pods:
            kill_pod(pod)
            pod.exit_code = pod.process.wait()
            self._log(f"{pod.name}: terminated, exit code {pod.exit_code}")

    async def _suspend(self, pods: list[Pod], spec: dict[str, Any]) -> None:
        """`spec.suspend: true` on a running Job: its pods are deleted with their grace period and
        not counted as failed; the Job shows Suspended, and a new pod starts when it is resumed."""
        job = pods[0].job
        grace = float(spec["template"]["spec"].get("terminationGracePeriodSeconds", 30))
        await self._terminate(pods, grace)
        self.pods.pop(job, None)
        self.job_pods.pop(job, None)
        stamp = now()
        # startTime stays until the Job is resumed (then it restarts), as the Job controller does.
        await self._patch_status(job, {"active": None, "ready": 0, "conditions": [
            condition("Suspended", "JobSuspended", "Job suspended", stamp)]})

    async def _deadline_exceeded(self, pods: list[Pod]) -> None:
        """`activeDeadlineSeconds` passed: the Job controller deletes the pods and fails the Job."""
        await self._terminate(pods, 1.0)
        stamp = now()
        message = "Job was active longer than specified deadline"
        await self._patch_status(pods[0].job, {"active": None, "ready": 0, "failed": len(pods), "conditions": [
            condition("FailureTarget", "DeadlineExceeded", message, stamp), condition("Failed", "DeadlineExceeded", message, stamp)]})

    async def _start_pod(self, job: dict[str, Any], pod: Pod) -> None:
        spec = job["spec"]["template"]["spec"]
        container = spec["containers"][0]
        pod.folder.mkdir(parents=True, exist_ok=True)
        mounts = await self._mount(spec, container, pod)
        hosts = self._pod_hosts(job, spec)
        env = self._env(container, pod, mounts, hosts)
        env.update(await self._referenced_env(container))
        command = [map_hosts(map_path(expand(arg, env), mounts), hosts)
                   for arg in container.get("command", []) + container.get("args", [])]
        command = self.command_map.get(command[0], [command[0]]) + command[1:]
        pod.command, pod.env = command, env
        with open(pod.folder / "log.txt", "wb") as log:
            pod.process = subprocess.Popen(command, env=env, cwd=pod.folder, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True)

    @staticmethod
    def _pod_hosts(job: dict[str, Any], spec: dict[str, Any]) -> dict[str, str]:
        """DNS names of an Indexed Job's pods under their headless Service -> this host."""
        subdomain = spec.get("subdomain")
        if not subdomain or (job.get("spec") or {}).get("completionMode") != "Indexed":
            return {}
        name = job["metadata"]["name"]
        return {f"{name}-{i}.{subdomain}": "127.0.0.1" for i in range(int(job["spec"].get("completions") or 1))}

    async def _mount(self, spec: dict[str, Any], container: dict[str, Any], pod: Pod) -> dict[str, Path]:
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                host = self.claim_dir(claim)
                if self.provision is not None and claim not in self._provisioned:
                    self._provisioned.add(claim)
                    self.provision(host)
            elif "configMap" in volume:
                host = pod.folder / "configmaps" / mount["name"]
            else:  # emptyDir
                host = pod.folder / "volumes" / mount["name"]
            host.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = host
        for mount in container.get("volumeMounts", []):  # files last: their paths need every mount
            volume = volumes[mount["name"]]
            if "configMap" in volume:
                data = await self._get_configmap_data(volume["configMap"]["name"])
                for key, text in data.items():
                    (mounts[mount["mountPath"]] / key).write_text(map_yaml_paths(text, mounts) if key.endswith((".yaml", ".yml")) else text)
        return mounts

    def _env(self, container: dict[str, Any], pod: Pod, mounts: dict[str, Path], hosts: dict[str, str]) -> dict[str, str]:
        env = {k: os.environ[k] for k in ("PATH", "VIRTUAL_ENV", "LANG", "PYTHONPATH") if k in os.environ}
        env.update(KUBECONFIG=str(self.kubeconfig), REFINERY_TERMINATION_LOG=str(pod.folder / "termination-log"))
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")  # shared CPUs
        fields = {"metadata.name": pod.name, "metadata.namespace": self.namespace,
                  "metadata.annotations['batch.kubernetes.io/job-completion-index']": str(pod.index)}
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = map_hosts(map_path(var["value"], mounts), hosts)
            elif "fieldRef" in (var.get("valueFrom") or {}):
                env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
        return env

    def _exit_code_rule(self, pod: Pod) -> int | None:
        """The index of the Job's podFailurePolicy rule matching the pod's exit code, as the Job controller finds it."""
        code = 137 if pod.exit_code == -9 else pod.exit_code
        rules = ((self.job_specs.get(pod.job) or {}).get("podFailurePolicy") or {}).get("rules") or []
        for i, rule in enumerate(rules):
            on = rule.get("onExitCodes") or {}
            if on.get("operator") == "In" and code in on.get("values", []):
                return i
        return None

    def _final_status(self, pod: Pod) -> dict[str, Any]:
        stamp = now()
        if pod.exit_code == 0 and not pod.evicted:
            return {"active": None, "ready": 0, "succeeded": 1, "completionTime": stamp, "conditions": [
                condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods", stamp),
                condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods", stamp),
            ]}
        if pod.evicted:
            reason = "PodFailurePolicy"
            message = f"Pod {self.namespace}/{pod.name} has condition DisruptionTarget matching FailJob rule at index 0"
        elif (index := self._exit_code_rule(pod)) is not None:
            reason = "PodFailurePolicy"
            code = 137 if pod.exit_code == -9 else pod.exit_code  # SIGKILL reads as 137 in a container
            message = (f"Container trainer for pod {self.namespace}/{pod.name} failed with exit code {code} matching "
                       f"FailJob rule at index {index}")
        else:
            reason, message = "BackoffLimitExceeded", "Job has reached the specified backoff limit"
        return {"active": None, "ready": 0, "failed": 1, "conditions": [
            condition("FailureTarget", reason, message, stamp),
            condition("Failed", reason, message, stamp),
        ]}

    # ------------------------------------------------------------------------------------------
    # API calls (the emulator's HTTP API, so watchers see every change)

    def _log(self, line: str) -> None:
        with open(self.root / "kubelet.log", "a") as log:
            log.write(f"{now()} {line}\n")

    async def _referenced_env(self, container: dict[str, Any]) -> dict[str, str]:
        """`envFrom` and `valueFrom` Secret/ConfigMap keys, read from the API as the kubelet does
        (a Secret's data is base64); `envFrom` first, so an explicit `env` entry wins."""
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            kind, ref = ("secrets", source["secretRef"]) if "secretRef" in source else ("configmaps", source["configMapRef"])
            for key, value in (await self._get_data(kind, ref["name"])).items():
                env[source.get("prefix", "") + key] = value
        for var in container.get("env", []):
            value_from = var.get("valueFrom") or {}
            for field_name, kind in (("secretKeyRef", "secrets"), ("configMapKeyRef", "configmaps")):
                if field_name in value_from:
                    env[var["name"]] = (await self._get_data(kind, value_from[field_name]["name"]))[value_from[field_name]["key"]]
        return env

    async def _get_data(self, kind: str, name: str) -> dict[str, str]:
        import base64

        assert self._session is not None
        async with self._session.get(f"{self.server}/api/v1/namespaces/{self.namespace}/{kind}/{name}") as resp:
            resp.raise_for_status()
            data = (await resp.json()).get("data") or {}
        return {k: base64.b64decode(v).decode() for k, v in data.items()} if kind == "secrets" else data

    async def _get_configmap_data(self, name: str) -> dict[str, str]:
        assert self._session is not None
        async with self._session.get(f"{self.server}/api/v1/namespaces/{self.namespace}/configmaps/{name}") as resp:
            resp.raise_for_status()
            return (await resp.json()).get("data") or {}

    async def _release(self, job: str) -> None:
        """The Job's pods are gone: forget them and remove the finalizer, so kmock deletes the Job."""
        self.pods.pop(job, None)
        self.job_pods.pop(job, None)
        await self._patch_finalizers(job, [])
        self._log(f"{job}: pods gone, deleted")

    async def _patch_finalizers(self, job: str, finalizers: list[str]) -> None:
        """Not found is fine: the Job was deleted before its finalizer was added."""
        assert self._session is not None
        url = f"{self.server}/apis/batch/v1/namespaces/{self.namespace}/jobs/{job}"
        headers = {"Content-Type": "application/merge-patch+json"}
        async with self._session.patch(url, data=json.dumps({"metadata": {"finalizers": finalizers}}), headers=headers) as resp:
            if resp.status != 404:
                resp.raise_for_status()

    async def _patch_status(self, job: str, status: dict[str, Any]) -> None:
        assert self._session is not None
        url = f"{self.server}/apis/batch/v1/namespaces/{self.namespace}/jobs/{job}/status"
        headers = {"Content-Type": "application/merge-patch+json"}
        async with self._session.patch(url, data=json.dumps({"status": status}), headers=headers) as resp:
            resp.raise_for_status()


def kill_pod(pod: Pod) -> None:
    """SIGKILL a pod's process group and every descendant (only processes this kubelet started)."""
    import psutil

    if pod.process is None or pod.process.poll() is not None:
        return
    try:
        children = psutil.Process(pod.process.pid).children(recursive=True)
    except psutil.Error:
        children = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pod.process.pid, signal.SIGKILL)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()


def expand(value: str, env: dict[str, str]) -> str:
    """`$(VAR)` -> the container's env value, as the kubelet expands command and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def map_hosts(value: str, hosts: dict[str, str]) -> str:
    """Pod DNS names -> 127.0.0.1 (every pod of the test runs on this host)."""
    for name, address in hosts.items():
        value = re.sub(rf"(?<![-.\w]){re.escape(name)}(?![-\w])", address, value)
    return value


def condition(type_: str, reason: str, message: str, stamp: str) -> dict[str, str]:
    return {"type": type_, "status": "True", "reason": reason, "message": message,
            "lastProbeTime": stamp, "lastTransitionTime": stamp}


def map_path(value: str, mounts: dict[str, Path]) -> str:
    """A container path -> the host folder it is mounted from (longest mount path first).

    A path that is already a host path is kept: the trainer reports the paths it actually
    wrote, and the operator hands them to the next stage (the temp dir lies under /tmp, itself
    a mount path of the pod).
    """
    if any(value == str(host) or value.startswith(f"{host}/") for host in mounts.values()):
        return value
    for mount in sorted(mounts, key=len, reverse=True):
        if value == mount or value.startswith(mount.rstrip("/") + "/"):
            return str(mounts[mount]) + value[len(mount.rstrip("/")):]
    return value


def map_yaml_paths(text: str, mounts: dict[str, Path]) -> str:
    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return map_path(node, mounts) if isinstance(node, str) else node

    return yaml.safe_dump(walk(yaml.safe_load(text)), sort_keys=False)

