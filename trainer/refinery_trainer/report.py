"""Progress reports of one stage process: a `ProgressRecord` only this process writes.

Where it goes (`StageRun.reporter`):
- `file`: the JSON file is rewritten atomically (temporary sibling + rename), so a reader (the
  local runner) never sees half a record;
- `configmap`: `data["progress.json"]` of the named ConfigMap is patched with the official
  `kubernetes` client (in-cluster config, falling back to `KUBECONFIG` like kopf's login), which
  the operator watches and folds into `status.stages[]`.

A report that fails is logged and dropped: progress reporting never stops training.

    reporter = Reporter.for_run(run)
    reporter.update(step=10, max_steps=100)             # throttled to progress_interval_s
    reporter.checkpoint(Checkpoint(step=10, path=...), count=1)   # immediate
    reporter.succeeded(metrics, output)                  # immediate, final
"""

from __future__ import annotations

import json
import logging
import time
from typing import Protocol

from refinery.api.run import (
    PROGRESS_FILE,
    ConfigMapReporter,
    FileReporter,
    ProgressRecord,
    StageRun,
)
from refinery.api.v1alpha1 import Checkpoint

from .checkpoints import atomic_write_text, now_rfc3339
from .eta import RemainingTime

log = logging.getLogger(__name__)


class Sink(Protocol):
    def write(self, text: str) -> None: ...


class FileSink:
    def __init__(self, path: str):
        self.path = path

    def write(self, text: str) -> None:
        atomic_write_text(self.path, text)

    def __repr__(self) -> str:
        return f"file {self.path}"


class ConfigMapSink:
    """Patches `data[progress.json]` of one ConfigMap (the pod's Role allows get/patch on it only)."""

    def __init__(self, namespace: str, name: str):
        self.namespace, self.name = namespace, name
        self._api = None

    def _core_api(self):
        if self._api is None:
            import kubernetes  # lazily: local mode and `--help` never need it

            try:
                kubernetes.config.load_incluster_config()
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config()  # honours KUBECONFIG, like kopf's login
            self._api = kubernetes.client.CoreV1Api()
        return self._api

    def write(self, text: str) -> None:
        body = {"data": {PROGRESS_FILE: text}}
        self._core_api().patch_namespaced_config_map(self.name, self.namespace, body)

    def __repr__(self) -> str:
        return f"configmap {self.namespace}/{self.name}"


def make_sink(spec: FileReporter | ConfigMapReporter | None) -> Sink | None:
    if isinstance(spec, FileReporter):
        return FileSink(spec.path)
    if isinstance(spec, ConfigMapReporter):
        return ConfigMapSink(spec.namespace, spec.name)
    return None


class Reporter:
    """Keeps the stage's `ProgressRecord` and sends it: throttled while running, at once on events."""

    def __init__(self, sink: Sink | None, *, attempt: int = 1, interval_s: float = 2.0, clock=time.monotonic):
        self.sink = sink
        self.interval_s = interval_s
        self.record = ProgressRecord(attempt=attempt)
        self._clock = clock
        self._last_sent: float | None = None
        self._remaining = RemainingTime()

    @classmethod
    def for_run(cls, run: StageRun) -> Reporter:
        return cls(make_sink(run.reporter), attempt=run.attempt, interval_s=run.progress_interval_s)

    def update(self, *, force: bool = False, **fields) -> bool:
        """Merge `fields` into the record; send it when forced or the interval has passed."""
        self._merge(fields)
        due = self._last_sent is None or self._clock() - self._last_sent >= self.interval_s
        return self.send() if (force or due) else False

    def checkpoint(self, checkpoint: Checkpoint, count: int, metrics: dict[str, float] | None = None) -> bool:
        fields = {"last_checkpoint": checkpoint, "checkpoints": count, "step": max(self.record.step, checkpoint.step)}
        if metrics:
            fields["metrics"] = {**self.record.metrics, **metrics}
        return self.update(force=True, **fields)

    def succeeded(self, metrics: dict[str, float], output: str, step: int | None = None) -> bool:
        # Exactly the result's metrics: the live training-log values are not final figures.
        fields = {"phase": "Succeeded", "metrics": dict(metrics), "output": output, "progress": 1.0}
        if step is not None:
            fields["step"] = step
        return self.update(force=True, **fields)

    def failed(self, message: str, reason: str) -> bool:
        return self.update(force=True, phase="Failed", message=message, failure_reason=reason)

    def send(self) -> bool:
        """Write the record now. Returns whether it was delivered; never raises."""
        self.record.update_time = now_rfc3339()
        self._last_sent = self._clock()
        if self.sink is None:
            return False
        try:
            self.sink.write(json.dumps(self.record.dump(), sort_keys=True))
        except Exception as exc:  # noqa: BLE001 - a report must never kill training
            # Only the type and text: an API exception's headers could carry tokens.
            log.warning("progress report to %r failed: %s: %s", self.sink, type(exc).__name__, short_error(exc))
            return False
        return True

    def _merge(self, fields: dict) -> None:
        data = self.record.model_dump()
        data.update(fields)
        if data.get("max_steps") and data.get("phase") == "Running":
            data["progress"] = min(1.0, data["step"] / data["max_steps"])
        if data.get("phase") == "Running":
            now = self._clock()
            data["estimated_remaining_seconds"] = self._remaining.observe(data["progress"], now)
            stage_seconds = self._remaining.seconds_per_stage(data["progress"], now)
            if stage_seconds is not None and data.get("max_steps"):
                data["seconds_per_step"] = round(stage_seconds / data["max_steps"], 4)
        elif data.get("phase") == "Succeeded":
            data["estimated_remaining_seconds"] = 0.0
        self.record = ProgressRecord.model_validate(data)


def short_error(exc: Exception, limit: int = 300) -> str:
    """An exception in a few words fit for logs, status and the termination message: HTTP errors
    as status and reason only (their bodies and headers can carry tokens), other text cut short."""
    status = getattr(exc, "status", None)  # kubernetes.client.ApiException: report status + reason only
    if status is not None:
        return f"HTTP {status} {getattr(exc, 'reason', '')}".strip()
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "..."
