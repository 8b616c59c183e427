"""The client's local-mode backend: pipelines in a work folder, each run by `refinery run` in the background.

    client = Client.local(workdir="runs", data_root="examples")
    client.apply(pipeline)      # starts `refinery run` (its output: runs/<name>/refinery-run.log); returns at once

A pipeline is the folder `<workdir>/<name>/` that `refinery run` keeps (status.json, pipeline.json,
events.jsonl, `.runs/<stage>-<attempt>.log`, each attempt's metrics.jsonl), plus two files of this
client: `manifest.yaml`, the manifest `apply` was given, and `client.json` (the run's process id,
whether it is suspended, the data root). So another process — `refinery get --local-workdir runs`,
a second notebook — sees and controls the same runs.

Suspend stops the run as Ctrl-C does: SIGTERM to `refinery run`, which stops its stage processes
with SIGTERM (the trainer saves a checkpoint first) and exits; the pipeline shows `Suspended` until
`resume` starts `refinery run` again, which continues from each stage's newest complete
checkpoint. `delete` stops the run and removes its folder. Needs the trainer extra to train
(`refinery run` is `refinery_operator.cli`, started as a process: this package never imports it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from ..api.run import (
    LOCAL_EVENTS_FILE, LOCAL_LOGS_DIR, LOCAL_PIPELINE_FILE, LOCAL_STATUS_FILE, METRICS_LOG_FILE, METRICS_PORT_ENV,
)
from ..api.v1alpha1 import Phase, PipelineStatus, StageStatus, TrainingPipeline
from ..core.naming import pipeline_root, stage_dir
from .client import PipelineEvent
from .errors import NoLogs, NotFound

MANIFEST_FILE = "manifest.yaml"
STATE_FILE = "client.json"
RUN_LOG = "refinery-run.log"
STOP_TIMEOUT_S = 120.0  # a stage saving its checkpoint on SIGTERM; then SIGKILL
FOLLOW_POLL_S = 0.2


class LocalBackend:
    def __init__(self, workdir: Path, data_root: Path | None = None) -> None:
        self.workdir = workdir.resolve()
        self.data_root = (data_root or Path.cwd()).resolve()
        self.where = f"local work folder {workdir}"
        self.processes: dict[str, subprocess.Popen] = {}  # the runs this client started (reaped by poll)

    def root(self, name: str) -> Path:
        # A resource name (DNS-1123), so that no name reaches outside the work folder (delete removes it).
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", name) or ".." in name:
            raise NotFound(f"{name!r} is not a pipeline name (lower-case letters, digits, '-' and '.')")
        return Path(pipeline_root(str(self.workdir), None, name))

    # -- state ----------------------------------------------------------------------------------

    def state(self, name: str) -> dict[str, Any]:
        try:
            return json.loads((self.root(name) / STATE_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def save_state(self, name: str, **changes: Any) -> None:
        state = {**self.state(name), **changes}
        tmp = self.root(name) / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.root(name) / STATE_FILE)

    def running(self, name: str) -> bool:
        """Whether the run's `refinery run` lives — started here or by another client (the pid in client.json)."""
        pid = self.state(name).get("pid")
        process = self.processes.get(name)
        if process is not None:
            alive = process.poll() is None  # also reaps it once it ended
            if process.pid == pid:
                return alive
        return pid is not None and is_refinery_run(pid)

    # -- the resource ---------------------------------------------------------------------------

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        name = manifest["metadata"]["name"]
        root = self.root(name)
        root.mkdir(parents=True, exist_ok=True)
        suspend = bool(manifest["spec"].get("suspend"))
        # `refinery run` refuses spec.suspend: here it is the client's state, and the run never sees it.
        text = yaml.safe_dump({**manifest, "spec": {**manifest["spec"], "suspend": False}}, sort_keys=False)
        path = root / MANIFEST_FILE
        changed = not path.exists() or path.read_text() != text
        if self.running(name) and (changed or suspend):
            self.stop(name)
        path.write_text(text)
        self.save_state(name, dataRoot=str(self.data_root), created=self.state(name).get("created") or stamp(time.time()))
        finished = self.status(name).phase in (Phase.succeeded, Phase.failed)
        if not suspend and not self.running(name) and (changed or not finished):
            self.start(name)
        self.save_state(name, suspended=suspend)  # after the start: a waiter never sees it unsuspended and stopped
        return self.get(name)

    def get(self, name: str) -> dict[str, Any]:
        root = self.root(name)
        manifest = self.manifest(name)
        state = self.state(name)
        status = self.status(name)
        if state.get("suspended") and status.phase not in (Phase.succeeded, Phase.failed):
            stages = [s.model_copy(update={"phase": Phase.suspended}) if s.phase == Phase.running else s for s in status.stages]
            status = status.model_copy(update={"phase": Phase.suspended, "stages": stages})
        manifest["spec"]["suspend"] = bool(state.get("suspended"))
        created = state.get("created") or stamp(root.stat().st_mtime)
        manifest["metadata"] = {**manifest["metadata"], "creationTimestamp": created}
        return {**manifest, "status": status.dump()}

    def manifest(self, name: str) -> dict[str, Any]:
        root = self.root(name)
        if (root / MANIFEST_FILE).exists():
            return yaml.safe_load((root / MANIFEST_FILE).read_text())
        try:  # a run started by `refinery run` itself
            return json.loads((root / LOCAL_PIPELINE_FILE).read_text())["pipeline"]
        except (FileNotFoundError, NotADirectoryError, ValueError, KeyError):
            raise NotFound(f"no pipeline {name!r} in the {self.where}") from None

    def status(self, name: str) -> PipelineStatus:
        try:
            return PipelineStatus.model_validate_json((self.root(name) / LOCAL_STATUS_FILE).read_text())
        except (FileNotFoundError, ValueError):  # not written yet
            return PipelineStatus()

    def list(self) -> list[dict[str, Any]]:
        names = sorted(p.name for p in self.workdir.glob("*")
                       if (p / MANIFEST_FILE).exists() or (p / LOCAL_PIPELINE_FILE).exists()) if self.workdir.is_dir() else []
        return [self.get(n) for n in names]

    def set_suspend(self, name: str, suspend: bool) -> None:
        # Suspended before the stop, unsuspended after the start: a `wait` elsewhere never sees a stopped run.
        if suspend:
            self.save_state(name, suspended=True)
            self.stop(name)
            return
        if not self.running(name) and self.status(name).phase not in (Phase.succeeded, Phase.failed):
            self.start(name)
        self.save_state(name, suspended=False)

    def delete(self, name: str) -> None:
        self.manifest(name)  # NotFound
        self.save_state(name, suspended=True)
        self.stop(name)
        shutil.rmtree(self.root(name))
        self.processes.pop(name, None)

    def events(self, name: str) -> list[PipelineEvent]:
        try:
            lines = (self.root(name) / LOCAL_EVENTS_FILE).read_text().splitlines()
        except FileNotFoundError:
            return []
        events = []
        for line in lines:
            try:
                e = json.loads(line)
            except ValueError:
                continue  # a line being written
            events.append(PipelineEvent(e["type"], e["reason"], e["message"], e.get("time")))
        return events

    # -- the run's process ----------------------------------------------------------------------

    def start(self, name: str) -> None:
        root = self.root(name)
        data_root = self.state(name).get("dataRoot") or str(self.data_root)
        command = [sys.executable, "-m", "refinery_operator.cli", "run", str(root / MANIFEST_FILE),
                   "--workdir", str(self.workdir), "--data-root", data_root, "--quiet", "--metrics-port", "0"]
        env = {k: v for k, v in os.environ.items() if k != METRICS_PORT_ENV}
        with open(root / RUN_LOG, "ab") as log:
            # Its own session: a Ctrl-C in the caller's terminal or notebook does not stop it.
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, start_new_session=True)
        self.processes[name] = process
        self.save_state(name, pid=process.pid)

    def stop(self, name: str) -> None:
        """SIGTERM, as Ctrl-C stops `refinery run` (running stages checkpoint); SIGKILL to its
        process group after STOP_TIMEOUT_S."""
        pid = self.state(name).get("pid")
        if pid is None or not self.running(name):
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while self.running(name) and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.running(name):
            os.killpg(pid, signal.SIGKILL)

    def stopped(self, name: str) -> str | None:
        if self.state(name).get("suspended") or self.running(name):
            return None
        if self.status(name).phase in (Phase.succeeded, Phase.failed):
            return None  # it finished between the caller's read and this one
        process = self.processes.get(name)
        code = f" (exit code {process.returncode})" if process is not None and process.pid == self.state(name).get("pid") else ""
        return (f"the local run of {name!r} stopped before the pipeline finished{code}: {last_line(self.root(name) / RUN_LOG)}"
                f"; its log: {self.root(name) / RUN_LOG}")

    # -- a stage's output -----------------------------------------------------------------------

    def logs(self, pipeline: TrainingPipeline, stage: StageStatus, follow: bool) -> Iterator[str]:
        name = pipeline.metadata.name
        if stage.attempt == 0:
            raise NoLogs(f"stage {stage.name!r} of pipeline {name!r} has not started yet (no attempt, no log)")
        path = self.root(name) / LOCAL_LOGS_DIR / f"{stage.name}-{stage.attempt}.log"
        if not path.exists():
            raise NoLogs(f"stage {stage.name!r} attempt {stage.attempt} of pipeline {name!r} has no log ({path})")

        def attempt_ended() -> bool:
            current = self.status(name).stage(stage.name)
            return (not self.running(name) or current is None or current.attempt != stage.attempt
                    or current.phase != Phase.running)

        return tail(path, attempt_ended if follow else None)

    def metrics(self, pipeline: TrainingPipeline, stage: StageStatus) -> list[dict[str, Any]]:
        return metrics_rows(Path(stage_dir(str(self.root(pipeline.metadata.name)), stage.name, stage.run)))


def metrics_rows(stage_folder: Path) -> list[dict[str, Any]]:
    """Every row the trainer logged to a stage's `metrics.jsonl`, attempt by attempt, each with its
    `attempt` (local mode's summary plots read the same rows)."""
    rows = []
    for number, attempt in sorted((n, p) for p in stage_folder.glob("attempt-*") if (n := attempt_number(p)) >= 0):
        try:
            lines = (attempt / METRICS_LOG_FILE).read_text().splitlines()
        except (FileNotFoundError, NotADirectoryError):
            continue
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # the last line of a killed attempt may be cut short
            if isinstance(entry, dict):
                rows.append({**entry, "attempt": number})
    return rows


def tail(path: Path, ended=None) -> Iterator[str]:
    """The file's lines; with `ended`, keep reading new lines until `ended()` and nothing more came."""
    with open(path, errors="replace") as log:
        pending = ""
        while True:
            chunk = log.read()
            if chunk:
                lines = (pending + chunk).split("\n")
                pending = lines.pop()
                yield from lines
                continue
            if ended is None or ended():
                lines = (pending + log.read()).split("\n")  # and what came between the last read and the end
                yield from lines[:-1]
                if lines[-1]:
                    yield lines[-1]
                return
            time.sleep(FOLLOW_POLL_S)


def attempt_number(folder: Path) -> int:
    try:
        return int(folder.name.removeprefix("attempt-"))
    except ValueError:
        return -1


def is_refinery_run(pid: int) -> bool:
    """Whether `pid` is a live `refinery run` (not a zombie, not a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if not proc.exists():  # no procfs (macOS): trust the signal
        return True
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z" and b"refinery_operator.cli" in (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return False


def last_line(path: Path) -> str:
    try:
        lines = [l for l in path.read_text(errors="replace").splitlines() if l.strip()]
    except FileNotFoundError:
        return "no output"
    return lines[-1][:300] if lines else "no output"


def stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
