"""`refinery.Client`: the same calls against a cluster and against local mode.

    from refinery import Client, TrainingPipeline

    client = Client()                                   # kubeconfig (current context), else in-cluster
    client = Client(context="gpu-cluster", namespace="ml")
    client = Client.local(workdir="runs")               # local mode: `refinery run` in the background

    client.apply(pipeline)                              # a TrainingPipeline, a manifest dict or a YAML path
    client.wait("tiny-chat", until="Succeeded", timeout=3600)   # a progress bar (tqdm.auto); progress=False: none
    client.stages("tiny-chat")                          # [StageStatus], in the spec's order
    pandas.DataFrame(client.metrics("tiny-chat", "sft"))
    for line in client.logs("tiny-chat", "sft", follow=True): print(line)
    client.suspend("tiny-chat"); client.resume("tiny-chat"); client.delete("tiny-chat")
    client.events("tiny-chat")

Errors are `refinery.client.NotFound`, `Unreachable`, `NoLogs`, `WaitTimeout` and
`PipelineFailed` (all `ClientError`); an invalid pipeline is refused by `apply` before anything
is sent, with `refinery.api.load.InvalidManifest` (the checks of `refinery validate`).

What each backend can show differs in one place, `metrics()`: local mode reads every logged row of
the stage's `metrics.jsonl` files; on a cluster those files are on the pipeline's volume, which a
client outside the cluster cannot read, so `metrics()` returns the one row the status holds (the
stage's latest metrics and its step). The full history on a cluster is in the experiment
tracker (`spec.tracking`) or on the volume (`<namespace>/<pipeline>/<stage>/attempt-<n>/metrics.jsonl`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..api.v1alpha1 import Phase, PipelineStatus, StageStatus, TrainingPipeline
from .errors import NotFound, PipelineFailed, WaitTimeout

TERMINAL = (Phase.succeeded, Phase.failed)


@dataclass(frozen=True)
class PipelineEvent:
    """An Event about a pipeline, as `kubectl describe` lists them (local mode keeps its own)."""

    type: str  # Normal | Warning
    reason: str
    message: str
    time: str | None = None  # RFC 3339, of the newest occurrence
    count: int = 1


class Backend(Protocol):
    """Where pipelines live: a namespace of a cluster (cluster.py) or a local work folder (local.py)."""

    where: str  # for messages: "namespace 'ml' (context kind-gpu)", "local work folder runs"

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]: ...
    def get(self, name: str) -> dict[str, Any]: ...
    def list(self) -> list[dict[str, Any]]: ...
    def set_suspend(self, name: str, suspend: bool) -> None: ...
    def delete(self, name: str) -> None: ...
    def events(self, name: str) -> list[PipelineEvent]: ...
    def logs(self, pipeline: TrainingPipeline, stage: StageStatus, follow: bool) -> Iterator[str]: ...
    def metrics(self, pipeline: TrainingPipeline, stage: StageStatus) -> list[dict[str, Any]]: ...
    def stopped(self, name: str) -> str | None: ...


class Client:
    """A cluster's pipelines (kubeconfig with an optional context, else the in-cluster
    ServiceAccount), or with `Client.local(...)` the pipelines of a local work folder."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None,
                 *, backend: Backend | None = None) -> None:
        if backend is None:
            from .cluster import ClusterBackend  # the Kubernetes client is imported only here

            backend = ClusterBackend(kubeconfig=kubeconfig, context=context, namespace=namespace)
        self.backend = backend
        self.poll_seconds = 1.0

    @classmethod
    def local(cls, workdir: str | Path = "runs", data_root: str | Path | None = None) -> Client:
        """Local mode's pipelines under `workdir` (what `refinery run --workdir` uses). `apply` starts
        `refinery run` in the background; relative data paths resolve against `data_root`
        (default: the current folder). Needs `refinery[trainer]` installed to train."""
        from .local import LocalBackend

        client = cls(backend=LocalBackend(Path(workdir), Path(data_root) if data_root else None))
        client.poll_seconds = 0.5
        return client

    # -- the resource ---------------------------------------------------------------------------

    def apply(self, pipeline: TrainingPipeline | dict[str, Any] | str | Path) -> TrainingPipeline:
        """Create the pipeline or update its spec (server-side apply; locally: start or restart the
        run). Checked first with `refinery validate`'s admission checks (InvalidManifest)."""
        typed = as_pipeline(pipeline).check()
        manifest = typed.model_copy(update={"status": None}).dump()
        return TrainingPipeline.model_validate(self.backend.apply(manifest))

    def get(self, name: str) -> TrainingPipeline:
        """The pipeline with its status; NotFound when there is none of that name."""
        return TrainingPipeline.model_validate(self.backend.get(name))

    def list(self) -> list[TrainingPipeline]:
        return [TrainingPipeline.model_validate(o) for o in self.backend.list()]

    def stages(self, name: str) -> list[StageStatus]:
        """Every stage's status in the spec's order (export last); Pending for one not started."""
        pipeline = self.get(name)
        return [stage_status(pipeline, s.name) for s in pipeline.spec.run_stages]

    def suspend(self, name: str) -> None:
        """`spec.suspend: true`: running stages save a checkpoint and stop (locally: the run is
        stopped with SIGTERM, as Ctrl-C stops `refinery run`)."""
        self.get(name)
        self.backend.set_suspend(name, True)

    def resume(self, name: str) -> None:
        """`spec.suspend: false`: stopped stages resume from their newest complete checkpoint."""
        self.get(name)
        self.backend.set_suspend(name, False)

    def delete(self, name: str) -> None:
        """Delete the pipeline and what it owns (locally: stop the run and remove its folder)."""
        self.backend.delete(name)

    def events(self, name: str) -> list[PipelineEvent]:
        """The pipeline's Events, oldest first."""
        self.get(name)
        return self.backend.events(name)

    # -- a stage's output -----------------------------------------------------------------------

    def metrics(self, name: str, stage: str) -> list[dict[str, Any]]:
        """A stage's metrics as rows (`pandas.DataFrame(rows)`): locally every row its trainer logged
        (`step`, `time`, `loss`, `eval_loss` ..., and `attempt`); on a cluster one row, the latest
        values from the status (module docstring: why)."""
        pipeline = self.get(name)
        return self.backend.metrics(pipeline, stage_status(pipeline, stage))

    def logs(self, name: str, stage: str, follow: bool = False) -> Iterator[str]:
        """The lines of the stage's current attempt (on a cluster its pod's log; locally
        `.runs/<stage>-<attempt>.log`); `follow` keeps reading until the attempt ends.
        NoLogs when the stage has not started or its pod is gone."""
        pipeline = self.get(name)
        return self.backend.logs(pipeline, stage_status(pipeline, stage), follow)

    # -- waiting --------------------------------------------------------------------------------

    def wait(self, name: str, until: str = "Succeeded", timeout: float | None = None, progress: bool = True) -> TrainingPipeline:
        """Return the pipeline once its phase is `until`; PipelineFailed when it ends in another
        phase (or a local run stopped), WaitTimeout after `timeout` seconds. While waiting, a
        progress bar (tqdm.auto: a widget in Jupyter, text in a terminal) unless `progress=False`."""
        until = Phase(until)
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = ProgressBar(name, enabled=progress)
        try:
            while True:
                pipeline = self.get(name)
                status = pipeline.status or PipelineStatus()
                bar.update(pipeline, status)
                if status.phase == until:
                    return pipeline
                if status.phase in TERMINAL:
                    raise PipelineFailed(f"pipeline {name!r} is {status.phase}, not {until}{failure_note(status)}", pipeline)
                stopped = self.backend.stopped(name)
                if stopped:
                    raise PipelineFailed(stopped, pipeline)
                if deadline is not None and time.monotonic() > deadline:
                    raise WaitTimeout(f"pipeline {name!r} is still {status.phase} after {timeout:g}s (waiting for {until})")
                time.sleep(self.poll_seconds)
        finally:
            bar.close()


def as_pipeline(pipeline: TrainingPipeline | dict[str, Any] | str | Path) -> TrainingPipeline:
    if isinstance(pipeline, TrainingPipeline):
        return pipeline
    if isinstance(pipeline, dict):
        from ..api.load import parse_pipeline

        return parse_pipeline(pipeline)
    from ..api.load import InvalidManifest, load_pipelines

    pipelines = load_pipelines(pipeline)
    if len(pipelines) != 1:
        raise InvalidManifest(str(pipeline), [f"{len(pipelines)} pipelines in this file: apply them one at a time"])
    return pipelines[0]


def stage_status(pipeline: TrainingPipeline, stage: str) -> StageStatus:
    if stage not in {s.name for s in pipeline.spec.run_stages}:
        raise NotFound(f"pipeline {pipeline.metadata.name!r} has no stage {stage!r} "
                       f"(its stages: {', '.join(s.name for s in pipeline.spec.run_stages)})")
    return (pipeline.status or PipelineStatus()).stage(stage) or StageStatus(name=stage)


def failure_note(status: PipelineStatus) -> str:
    failed = [s for s in status.stages if s.phase == Phase.failed]
    return f": stage {failed[0].name!r} failed: {failed[0].message}" if failed and failed[0].message else ""


class ProgressBar:
    """One bar for the pipeline: stages done (a running one counts its share), the running stage,
    its step and the pipeline's ETA. tqdm.auto draws a widget in Jupyter and text elsewhere."""

    def __init__(self, name: str, enabled: bool = True) -> None:
        self.name, self.enabled, self.bar = name, enabled, None

    def update(self, pipeline: TrainingPipeline, status: PipelineStatus) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=len(pipeline.spec.run_stages), desc=self.name, file=sys.stderr, unit="stage",
                            mininterval=0.5, bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}{postfix}")
        done = sum(1.0 if s.phase == Phase.succeeded else s.progress for s in status.stages)
        running = [s for s in status.stages if s.phase == Phase.running]
        where = f"{running[0].name} step {running[0].step or 0}/{running[0].max_steps or '?'}" if running else ""
        eta = f"eta {status.eta}" if status.eta else ""
        self.bar.n = round(done, 3)
        self.bar.set_postfix_str(" ".join(p for p in (str(status.phase), where, eta) if p), refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
