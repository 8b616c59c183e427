"""A test "kubelet" (plus the Job controller's status bookkeeping) for the kmock emulator.

It watches Jobs in the emulator and, for each new one, runs its pod as a local process:

- the container's command and env (`valueFrom.fieldRef` for the pod's name and namespace);
- volumes mapped to folders of a temp dir: each PVC -> `<root>/pvc/<claimName>` (shared by all
  pods, like a real volume), each emptyDir -> a folder of the pod, each configMap -> its keys
  written as files (fetched from the emulator, as the kubelet would);
- paths: every string in the command, the env and the mounted YAML files (the StageRun) that
  lies under a mount path (e.g. `/workspace/...`, `/etc/refinery/stage.yaml`) is rewritten to
  the mapped folder. The trainer itself runs unmodified — no path-mapping env var.

It then writes the Job's status back the way the Job controller does (`active`/`ready`/
`startTime` while running; `succeeded` + `SuccessCriteriaMet`/`Complete`, or `failed` +
`FailureTarget`/`Failed` with the controller's reasons when the process exits). `evict()`
kills a pod and fails its Job the way a DisruptionTarget pod-failure-policy rule does.

What it does not do (no scheduler, no node): resource requests (GPUs) are not enforced,
securityContext is ignored (the process runs as the test user), no image is pulled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import yaml


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
                 command_map: dict[str, list[str]] | None = None) -> None:
        self.server = server.rstrip("/")
        self.kubeconfig = kubeconfig
        self.root = root
        self.namespace = namespace
        self.command_map = command_map or {}  # e.g. {"refinery-train": [python, fake_stage.py]}
        self.pods: dict[str, Pod] = {}
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
        if event.get("type") in ("ADDED", "MODIFIED") and name and name not in self.pods and not finished:
            pod = Pod(job=name, name=f"{name}-x7k2p", folder=self.root / "pods" / name, command=[])
            self.pods[name] = pod
            task = asyncio.create_task(self._run_pod(job, pod))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Kill the pods still running (only the processes this kubelet started)."""
        for pod in self.pods.values():
            if pod.process is not None and pod.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pod.process.pid, signal.SIGKILL)
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

    async def _run_pod(self, job: dict[str, Any], pod: Pod) -> None:
        try:
            spec = job["spec"]["template"]["spec"]
            container = spec["containers"][0]
            pod.folder.mkdir(parents=True, exist_ok=True)
            mounts = await self._mount(spec, container, pod)
            env = self._env(container, pod, mounts)
            command = [map_path(arg, mounts) for arg in container.get("command", []) + container.get("args", [])]
            command = self.command_map.get(command[0], [command[0]]) + command[1:]
            pod.command = command
            with open(pod.folder / "log.txt", "wb") as log:
                pod.process = subprocess.Popen(command, env=env, cwd=pod.folder, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True)
            await self._patch_status(pod.job, {"active": 1, "ready": 1, "startTime": now()})
            while pod.process.poll() is None:  # polled: no asyncio child watcher involved
                await asyncio.sleep(0.1)
            pod.exit_code = pod.process.returncode
            self._log(f"{pod.job}: exited with {pod.exit_code}")
            await self._patch_status(pod.job, self._final_status(pod))
            self._log(f"{pod.job}: status written")
        finally:
            pod.done.set()

    async def _mount(self, spec: dict[str, Any], container: dict[str, Any], pod: Pod) -> dict[str, Path]:
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "persistentVolumeClaim" in volume:
                host = self.claim_dir(volume["persistentVolumeClaim"]["claimName"])
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

    def _env(self, container: dict[str, Any], pod: Pod, mounts: dict[str, Path]) -> dict[str, str]:
        env = {k: os.environ[k] for k in ("PATH", "VIRTUAL_ENV", "LANG", "PYTHONPATH") if k in os.environ}
        env.update(KUBECONFIG=str(self.kubeconfig), REFINERY_TERMINATION_LOG=str(pod.folder / "termination-log"))
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")  # shared CPUs
        fields = {"metadata.name": pod.name, "metadata.namespace": self.namespace}
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = map_path(var["value"], mounts)
            elif "fieldRef" in (var.get("valueFrom") or {}):
                env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
        return env

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
        elif pod.exit_code in (137, -9):
            reason = "PodFailurePolicy"
            message = f"Container trainer for pod {self.namespace}/{pod.name} failed with exit code 137 matching FailJob rule at index 1"
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

    async def _get_configmap_data(self, name: str) -> dict[str, str]:
        assert self._session is not None
        async with self._session.get(f"{self.server}/api/v1/namespaces/{self.namespace}/configmaps/{name}") as resp:
            resp.raise_for_status()
            return (await resp.json()).get("data") or {}

    async def _patch_status(self, job: str, status: dict[str, Any]) -> None:
        assert self._session is not None
        url = f"{self.server}/apis/batch/v1/namespaces/{self.namespace}/jobs/{job}/status"
        headers = {"Content-Type": "application/merge-patch+json"}
        async with self._session.patch(url, data=json.dumps({"status": status}), headers=headers) as resp:
            resp.raise_for_status()


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

