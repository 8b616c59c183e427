"""Prometheus metrics of the operator (and of local mode, which runs the same planner).

    from refinery_operator import metrics
    metrics.serve(8000)                                       # once, at start-up
    metrics.record_pipeline(ns, name, pipeline.status, pipeline.spec)   # after every reconcile
    metrics.forget_pipeline(ns, name)                         # when the pipeline is deleted
    metrics.observe_checkpoint_latency(seconds)               # checkpoint written -> in .status
    metrics.observe_next_job_latency(seconds)                 # stage done -> next Job created
    metrics.observe_status_conflict()                         # a status patch refused (409)

Everything about a pipeline is derived from its `.status` (plus the spec, for GPUs and retry
budgets): `record_pipeline` stores a snapshot and a custom collector turns the snapshots into
samples at scrape time. So a deleted pipeline vanishes from /metrics with one `forget_pipeline`,
an operator restart rebuilds the same gauges from the statuses it reads, and durations of running
stages are as fresh as the scrape. The counters (restarts by class, GPU-seconds, lost GPU-seconds)
are the operator's own running totals in `.status`, so they survive operator restarts; only the two
latency histograms and the status-conflict counter are state of this process.

Names follow Prometheus conventions (`refinery_` prefix, base units, `_total` counters) and pass
`promtool check metrics`; `METRICS` lists them all and `docs/metrics.md` is generated from it
(`python scripts/make_metrics_doc.py`). This module imports no kopf and no Kubernetes client.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, PlatformCollector, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from refinery.api.run import METRICS_PORT_ENV
from refinery.api.v1alpha1 import Phase, PipelineSpec, PipelineStatus, StageStatus
from refinery.core import accounting

PORT_ENV = METRICS_PORT_ENV
PHASES = [p.value for p in Phase]
FAILURE_CLASSES = ("application", "infrastructure", "disruption")  # label values; the spec's `retries` keys
# Around the 1 s target of DESIGN.md ("checkpoint written -> visible in kubectl get tp, p99").
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0)

STAGE_LABELS = ("namespace", "pipeline", "stage")
HACKING_SIGNALS = ("rewardOveroptimized", "groundTruthFell", "completionsDegenerate", "completionsCollapsed",
                   "klExceeded")  # rlhf verdicts (refinery_trainer/evaluation/hacking.py, audit.py)


@dataclass(frozen=True)
class MetricDef:
    """One metric as documented: name as scraped, type, labels, help text."""

    name: str
    type: str  # gauge | counter | histogram
    labels: tuple[str, ...]
    help: str


METRICS: tuple[MetricDef, ...] = (
    MetricDef("refinery_pipelines", "gauge", ("namespace", "phase"), "Pipelines known to the operator, by phase."),
    MetricDef("refinery_pipeline_phase", "gauge", ("namespace", "pipeline", "phase"),
              "1 for the pipeline's current phase, 0 for the others."),
    MetricDef("refinery_stage_phase", "gauge", (*STAGE_LABELS, "type", "phase"),
              "1 for the stage's current phase, 0 for the others."),
    MetricDef("refinery_pipeline_eta_seconds", "gauge", ("namespace", "pipeline"),
              "Seconds until a running pipeline ends, estimated (status.estimatedRemainingSeconds: the longest chain of "
              "remaining stages); absent until a stage has measured its pace."),
    MetricDef("refinery_stage_progress_ratio", "gauge", STAGE_LABELS, "Share of the stage's planned steps done (0-1)."),
    MetricDef("refinery_stage_eta_seconds", "gauge", STAGE_LABELS,
              "Seconds the stage's running attempt has left at its pace since its first step (0 once succeeded); "
              "absent before its first steps."),
    MetricDef("refinery_stage_step", "gauge", STAGE_LABELS, "Optimiser steps the stage has done, as last reported."),
    MetricDef("refinery_stage_attempt", "gauge", STAGE_LABELS, "Current attempt of the stage (1-based; 0 before the first)."),
    MetricDef("refinery_stage_checkpoints", "gauge", STAGE_LABELS, "Complete checkpoints the stage has written."),
    MetricDef("refinery_stage_last_checkpoint_step", "gauge", STAGE_LABELS, "Optimiser step of the newest complete checkpoint."),
    MetricDef("refinery_stage_last_checkpoint_timestamp_seconds", "gauge", STAGE_LABELS,
              "Unix time the newest complete checkpoint was written; its age is time() minus this."),
    MetricDef("refinery_stage_start_timestamp_seconds", "gauge", STAGE_LABELS, "Unix time the stage's first attempt started."),
    MetricDef("refinery_stage_duration_seconds", "gauge", STAGE_LABELS,
              "Wall-clock time from the stage's first start to its completion (or to now while it runs)."),
    MetricDef("refinery_stage_gpus", "gauge", STAGE_LABELS, "GPUs one attempt of the stage requests (GPUs per node x nodes)."),
    MetricDef("refinery_stage_retry_budget", "gauge", (*STAGE_LABELS, "class"),
              "Retries the stage may spend on failures of this class (spec.stages[].retries; for disruption: in a row "
              "without a newer checkpoint)."),
    MetricDef("refinery_stage_restarts_total", "counter", (*STAGE_LABELS, "class"),
              "Stage attempts retried after a failure of this class (application: the trainer; infrastructure: the "
              "platform; disruption: the attempt was stopped from outside — pod deleted, evicted, preempted, node "
              "lost). From status.restartsByClass."),
    MetricDef("refinery_stage_gpu_seconds_total", "counter", STAGE_LABELS,
              "GPU-seconds held by the stage's pods over all attempts (status.gpuSeconds: GPUs x each attempt's time "
              "from its start to its end or latest progress report)."),
    MetricDef("refinery_stage_lost_gpu_seconds_total", "counter", STAGE_LABELS,
              "GPU-seconds of work lost to failures: GPUs x time from the newest checkpoint to each failure "
              "(status.lostGpuSeconds)."),
    MetricDef("refinery_eval_score", "gauge", (*STAGE_LABELS, "model", "score"),
              "An eval stage's final score of one evaluated model (status metric `<model>.<score>`: exactMatch, "
              "contains, meanReward, winRate, passAtK, meanAtK, the name of each of eval.generate.rewards, ..., or "
              "`<task>/<metric>` of lm-evaluation-harness)."),
    MetricDef("refinery_stage_reward_hacking", "gauge", (*STAGE_LABELS, "signal"),
              "1 while an rlhf stage reports reward hacking, by signal: `rewardOveroptimized` (the reward rose while "
              "the audit fell), `groundTruthFell` (held-out exact match fell), `completionsDegenerate` (answers became "
              "alike), `completionsCollapsed` (empty or truncated) or `klExceeded` (KL above rl.maxKl); 0 otherwise."),
    MetricDef("refinery_checkpoint_status_latency_seconds", "histogram", (),
              "Time from a checkpoint's completion (its marker time) to the operator writing it into .status."),
    MetricDef("refinery_next_job_latency_seconds", "histogram", (),
              "Time from a stage's completion to the Job of a stage that depended on it being created."),
    MetricDef("refinery_status_conflicts_total", "counter", (),
              "Status patches the API server refused because the pipeline had changed since the version they were "
              "computed from (409); each is followed by a pass from a fresh read."),
)
# Recorded by this process (prometheus_client objects), not derived from statuses by the collector.
PROCESS_OWN = frozenset({"refinery_checkpoint_status_latency_seconds", "refinery_next_job_latency_seconds",
                         "refinery_status_conflicts_total"})


def parse_time(stamp: str | None) -> float | None:
    """RFC 3339 (`2025-01-02T03:04:05Z`) to Unix seconds; None for None or garbage."""
    parsed = accounting.parse_time(stamp)
    return parsed.timestamp() if parsed is not None else None


@dataclass
class StageSnapshot:
    """What the collector needs of one stage: its status and facts from the spec."""

    status: StageStatus
    type: str = ""
    gpus: int = 0
    budgets: dict[str, int] = field(default_factory=dict)


@dataclass
class PipelineSnapshot:
    phase: str
    stages: dict[str, StageSnapshot]
    eta_seconds: int | None = None


class OperatorMetrics(Collector):
    """The operator's registry: status-derived samples (this collector) plus two histograms."""

    def __init__(self, registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.time,
                 process_metrics: bool = False):
        self.registry = registry if registry is not None else CollectorRegistry()
        if process_metrics:  # process_cpu_seconds_total, python_info, ... of this process
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self.clock = clock
        self._lock = threading.Lock()  # records come from the event loop, scrapes from the HTTP thread
        self._pipelines: dict[tuple[str, str], PipelineSnapshot] = {}
        self.checkpoint_latency = Histogram(
            "refinery_checkpoint_status_latency_seconds", _help("refinery_checkpoint_status_latency_seconds"),
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.next_job_latency = Histogram(
            "refinery_next_job_latency_seconds", _help("refinery_next_job_latency_seconds"),
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.status_conflicts = Counter(
            "refinery_status_conflicts", _help("refinery_status_conflicts_total"), registry=self.registry,
        )
        self.registry.register(self)

    # ---- recording ---------------------------------------------------------------------------

    def record_pipeline(self, namespace: str, name: str, status: PipelineStatus | None, spec: PipelineSpec | None = None) -> None:
        """Set every gauge of a pipeline from its status (and spec); call after each reconcile."""
        status = status or PipelineStatus()
        stages = {s.name: self._stage_snapshot(s, spec) for s in status.stages}
        with self._lock:
            self._pipelines[namespace, name] = PipelineSnapshot(phase=str(status.phase), stages=stages,
                                                                eta_seconds=status.estimated_remaining_seconds)

    def forget_pipeline(self, namespace: str, name: str) -> None:
        """Drop every sample of a deleted pipeline."""
        with self._lock:
            self._pipelines.pop((namespace, name), None)

    def observe_checkpoint_latency(self, seconds: float) -> None:
        self.checkpoint_latency.observe(max(0.0, seconds))

    def observe_next_job_latency(self, seconds: float) -> None:
        self.next_job_latency.observe(max(0.0, seconds))

    @staticmethod
    def _stage_snapshot(status: StageStatus, spec: PipelineSpec | None) -> StageSnapshot:
        snap = StageSnapshot(status=status.model_copy(deep=True))
        stage = next((s for s in spec.run_stages if s.name == status.name), None) if spec else None
        if stage is not None:
            snap.type = str(stage.type)
            snap.gpus = accounting.gpus_of(stage)
            snap.budgets = {cls: getattr(stage.retries, cls) for cls in FAILURE_CLASSES}
        return snap

    # ---- collecting --------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        with self._lock:
            pipelines = dict(self._pipelines)
        families = {d.name: _family(d) for d in METRICS if d.name not in PROCESS_OWN}
        counts: dict[tuple[str, str], int] = {}
        for (namespace, name), pipeline in sorted(pipelines.items()):
            for phase in PHASES:
                families["refinery_pipeline_phase"].add_metric([namespace, name, phase], float(pipeline.phase == phase))
            if pipeline.eta_seconds is not None:
                families["refinery_pipeline_eta_seconds"].add_metric([namespace, name], float(pipeline.eta_seconds))
            counts[namespace, pipeline.phase] = counts.get((namespace, pipeline.phase), 0) + 1
            for stage_name, snap in pipeline.stages.items():
                for sample_name, labels, value in stage_samples((namespace, name, stage_name), snap, now):
                    families[sample_name].add_metric(labels, value)
        for namespace in sorted({ns for ns, _ in pipelines}):
            for phase in PHASES:
                families["refinery_pipelines"].add_metric([namespace, phase], float(counts.get((namespace, phase), 0)))
        yield from families.values()

    def describe(self) -> Iterable[Metric]:
        return [_family(d) for d in METRICS if d.name not in PROCESS_OWN]

    def serve(self, port: int, addr: str = "0.0.0.0"):
        """Serve /metrics over HTTP in a daemon thread; returns (server, thread)."""
        return start_http_server(port, addr=addr, registry=self.registry)


def stage_samples(key: tuple[str, str, str], snap: StageSnapshot, now: float) -> Iterator[tuple[str, list[str], float]]:
    """(metric name, label values, value) of one stage; pure, so a test can read it directly."""
    s, labels = snap.status, list(key)
    for phase in PHASES:
        yield "refinery_stage_phase", [*labels, snap.type, phase], float(str(s.phase) == phase)
    yield "refinery_stage_progress_ratio", labels, float(s.progress)
    if s.estimated_remaining_seconds is not None:
        yield "refinery_stage_eta_seconds", labels, float(s.estimated_remaining_seconds)
    yield "refinery_stage_attempt", labels, float(s.attempt)
    yield "refinery_stage_checkpoints", labels, float(s.checkpoints)
    yield "refinery_stage_gpus", labels, float(snap.gpus)
    if s.step is not None:
        yield "refinery_stage_step", labels, float(s.step)
    if s.last_checkpoint is not None:
        yield "refinery_stage_last_checkpoint_step", labels, float(s.last_checkpoint.step)
        stamp = parse_time(s.last_checkpoint.time)
        if stamp is not None:
            yield "refinery_stage_last_checkpoint_timestamp_seconds", labels, stamp
    for cls, budget in snap.budgets.items():
        yield "refinery_stage_retry_budget", [*labels, cls], float(budget)
    for cls in FAILURE_CLASSES:
        yield "refinery_stage_restarts_total", [*labels, cls], float(getattr(s.restarts_by_class, cls))
    started = parse_time(s.start_time)
    duration = 0.0
    if started is not None:
        yield "refinery_stage_start_timestamp_seconds", labels, started
        ended = parse_time(s.completion_time) if str(s.phase) in (Phase.succeeded, Phase.failed) else None
        duration = max(0.0, (ended if ended is not None else now) - started)
        yield "refinery_stage_duration_seconds", labels, duration
    yield "refinery_stage_gpu_seconds_total", labels, float(s.gpu_seconds)
    yield "refinery_stage_lost_gpu_seconds_total", labels, float(s.lost_gpu_seconds)
    for key, value in sorted(s.metrics.items()):
        model, dot, score = key.partition(".")
        if dot:  # an eval stage's `<model>.<score>`
            yield "refinery_eval_score", [*labels, model, score], float(value)
        elif key in HACKING_SIGNALS:
            yield "refinery_stage_reward_hacking", [*labels, key], float(value)


def _help(name: str) -> str:
    return next(d.help for d in METRICS if d.name == name)


def _family(d: MetricDef) -> Metric:
    if d.type == "counter":
        return CounterMetricFamily(d.name.removesuffix("_total"), d.help, labels=list(d.labels))
    return GaugeMetricFamily(d.name, d.help, labels=list(d.labels))


def port_from_environment(default: int | None = None) -> int | None:
    """`REFINERY_METRICS_PORT` as an int; unset or empty gives `default`, `0` turns metrics off."""
    raw = os.environ.get(PORT_ENV, "").strip()
    if not raw:
        return default
    port = int(raw)
    return port or None


# ---- the process-wide instance the operator and local mode use ----------------------------------

OPERATOR = OperatorMetrics(process_metrics=True)


def record_pipeline(namespace: str, name: str, status: PipelineStatus | None, spec: PipelineSpec | None = None) -> None:
    OPERATOR.record_pipeline(namespace, name, status, spec)


def forget_pipeline(namespace: str, name: str) -> None:
    OPERATOR.forget_pipeline(namespace, name)


def observe_checkpoint_latency(seconds: float) -> None:
    OPERATOR.observe_checkpoint_latency(seconds)


def observe_next_job_latency(seconds: float) -> None:
    OPERATOR.observe_next_job_latency(seconds)


def observe_status_conflict() -> None:
    OPERATOR.status_conflicts.inc()


def serve(port: int, addr: str = "0.0.0.0") -> Any:
    """Serve the operator's /metrics (plus process_* metrics of this process) on `port`."""
    return OPERATOR.serve(port, addr)


def serve_from_environment(default: int | None = None, addr: str = "0.0.0.0") -> int | None:
    """Serve on `$REFINERY_METRICS_PORT` (or `default`); returns the port, None when off."""
    port = port_from_environment(default)
    if port is not None:
        serve(port, addr)
    return port
