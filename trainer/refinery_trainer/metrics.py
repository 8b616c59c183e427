"""Prometheus metrics of a stage process: loss, learning rate, tokens, steps, eval metrics, reward, KL.

    REFINERY_METRICS_PORT=9400 refinery-train run --config stage.yaml
    curl localhost:9400/metrics

`MetricsCallback` (added by `StageContext.callbacks()`) copies every log dict the Trainer emits
into gauges and counters of a registry of this process, served over HTTP by rank 0 only (the one
process that logs). The port is `$REFINERY_METRICS_PORT`; unset, it is 9400 inside a pod
(`KUBERNETES_SERVICE_HOST` is set) and off elsewhere, so local runs never fight over a port; `0`
turns it off everywhere. Scraped by the chart's PodMonitor through the container port `metrics`.

Every sample carries `pipeline`, `stage` and `type` (from the StageRun); Prometheus adds
`namespace` and `pod` from the scrape target. `METRICS` lists the metrics; `docs/metrics.md` is
generated from it. Names pass `promtool check metrics`.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from transformers import TrainerCallback

from refinery.api.rewards import WATCH_NAME
from refinery.api.run import METRICS_PORT_ENV

if TYPE_CHECKING:
    from .context import StageContext

log = logging.getLogger(__name__)

PORT_ENV = METRICS_PORT_ENV  # the same variable the operator and local mode read
POD_DEFAULT_PORT = 9400
LABELS = ("pipeline", "stage", "type")


@dataclass(frozen=True)
class MetricDef:
    """One metric as documented (the trainer imports only `api` from the operator's package)."""

    name: str
    type: str  # gauge | counter
    labels: tuple[str, ...]
    help: str


METRICS: tuple[MetricDef, ...] = (
    MetricDef("refinery_trainer_step", "gauge", LABELS, "Optimiser step the Trainer is at (global_step; survives resumes)."),
    MetricDef("refinery_trainer_max_steps", "gauge", LABELS, "Optimiser steps planned for the stage."),
    MetricDef("refinery_trainer_steps_total", "counter", LABELS,
              "Optimiser steps this process has done; rate() is the step rate."),
    MetricDef("refinery_trainer_epoch", "gauge", LABELS, "Epochs done, fractional."),
    MetricDef("refinery_trainer_loss", "gauge", LABELS, "Training loss, mean over the latest logging window."),
    MetricDef("refinery_trainer_learning_rate", "gauge", LABELS, "Learning rate at the latest logging step."),
    MetricDef("refinery_trainer_grad_norm", "gauge", LABELS, "Gradient norm at the latest logging step (before clipping)."),
    MetricDef("refinery_trainer_tokens_total", "counter", LABELS,
              "Input tokens trained on by this process (where the trainer counts them: TRL's num_tokens or "
              "transformers' num_input_tokens_seen); rate() is tokens per second."),
    MetricDef("refinery_trainer_tokens_per_second", "gauge", LABELS,
              "Non-padding tokens trained on per second of training steps (all processes), over the latest logging window."),
    MetricDef("refinery_trainer_mfu_ratio", "gauge", LABELS,
              "Model FLOPs utilisation (0-1) over the latest logging window: tokens/s x training FLOPs per token "
              "(6 x parameters + attention) over the GPUs' bf16 peak. Absent on a CPU or a GPU whose peak is unknown."),
    MetricDef("refinery_trainer_eval_loss", "gauge", LABELS, "Loss on the held-out data at the latest evaluation."),
    MetricDef("refinery_trainer_eval_metric", "gauge", (*LABELS, "metric"),
              "Every other number of the latest evaluation, by name without the eval_ prefix (accuracy, reward ...)."),
    MetricDef("refinery_trainer_reward", "gauge", LABELS,
              "rlhf: mean reward (the weighted sum of rl.rewards) of the completions sampled in the latest logging window."),
    MetricDef("refinery_trainer_reward_component", "gauge", (*LABELS, "reward"),
              "rlhf: each source of rl.rewards on its own (its unweighted mean over the latest logging window), by name."),
    MetricDef("refinery_trainer_held_out", "gauge", (*LABELS, "measure"),
              "rlhf: the held-out watch's latest evaluation of greedy completions: measure `reward`, `audit`, "
              "`exact_match`, `distinct` (share of distinct answers)."),
    MetricDef("refinery_trainer_kl", "gauge", LABELS,
              "rlhf: KL divergence of the policy to the initial policy in the latest logging window."),
    MetricDef("refinery_trainer_last_log_timestamp_seconds", "gauge", LABELS,
              "Unix time of the latest log (training or evaluation); time() minus this is how long the trainer is quiet."),
)

# Trainer log key -> gauge name. Anything else starting with `eval_` goes to eval_metric.
LOG_GAUGES = {
    "loss": "refinery_trainer_loss",
    "learning_rate": "refinery_trainer_learning_rate",
    "grad_norm": "refinery_trainer_grad_norm",
    "epoch": "refinery_trainer_epoch",
    "eval_loss": "refinery_trainer_eval_loss",
    "reward": "refinery_trainer_reward",
    "kl": "refinery_trainer_kl",
    "tokens_per_second": "refinery_trainer_tokens_per_second",  # added to training logs by ThroughputCallback
    "mfu": "refinery_trainer_mfu_ratio",
}
EVAL_SKIPPED = ("runtime", "samples_per_second", "steps_per_second")  # timings, not quality


class TrainerMetrics:
    """The registry of one stage process, with label values fixed at creation."""

    def __init__(self, pipeline: str, stage: str, stage_type: str, registry: CollectorRegistry | None = None,
                 clock=time.time):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.clock = clock
        self.labels = {"pipeline": pipeline, "stage": stage, "type": stage_type}
        self._families: dict[str, Gauge | Counter] = {}
        for d in METRICS:
            kind = Counter if d.type == "counter" else Gauge
            self._families[d.name] = kind(d.name.removesuffix("_total"), d.help, list(d.labels), registry=self.registry)
        self._tokens_seen: float | None = None

    def _child(self, name: str, **extra: str):
        return self._families[name].labels(**self.labels, **extra)

    def set(self, name: str, value: float, **extra: str) -> None:
        self._child(name, **extra).set(value)

    def on_train_begin(self, step: int, max_steps: int | None, tokens_seen: float = 0.0) -> None:
        """A resumed run starts at the checkpoint's step and token count; neither counts as work of this process."""
        self.set("refinery_trainer_step", step)
        if max_steps:
            self.set("refinery_trainer_max_steps", max_steps)
        self._tokens_seen = tokens_seen
        self._child("refinery_trainer_steps_total")  # present at 0 from the start, so rate() sees the first step
        self._child("refinery_trainer_tokens_total")

    def on_step(self, step: int) -> None:
        self.set("refinery_trainer_step", step)
        self._child("refinery_trainer_steps_total").inc()

    def on_log(self, logs: dict[str, Any], step: int | None = None, tokens_seen: float | None = None) -> None:
        """Copy one log dict of the Trainer (training or evaluation) into the metrics."""
        for key, value in logs.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                continue  # a NaN loss fails the stage elsewhere; a gauge would only hide it
            if key in LOG_GAUGES:
                self.set(LOG_GAUGES[key], value)
            elif key.startswith("rewards/") and key.endswith("/mean") and key.count("/") == 2 \
                    and key != f"rewards/{WATCH_NAME}/mean":
                self.set("refinery_trainer_reward_component", value, reward=key.split("/")[1])
            elif key.startswith("held_out_") and "/" not in key:
                self.set("refinery_trainer_held_out", value, measure=key.removeprefix("held_out_"))
            elif key.startswith("eval_") and not key.endswith(EVAL_SKIPPED):
                self.set("refinery_trainer_eval_metric", value, metric=key.removeprefix("eval_"))
        if step is not None:
            self.set("refinery_trainer_step", step)
        tokens = logs.get("num_tokens", tokens_seen)
        if isinstance(tokens, (int, float)) and tokens > 0:
            self._count_tokens(float(tokens))
        self.set("refinery_trainer_last_log_timestamp_seconds", self.clock())

    def _count_tokens(self, cumulative: float) -> None:
        if self._tokens_seen is None:
            self._tokens_seen = 0.0
        if cumulative > self._tokens_seen:
            self._child("refinery_trainer_tokens_total").inc(cumulative - self._tokens_seen)
            self._tokens_seen = cumulative

    def serve(self, port: int, addr: str = "0.0.0.0"):
        return start_http_server(port, addr=addr, registry=self.registry)


class MetricsCallback(TrainerCallback):
    """Feeds `TrainerMetrics` from the Trainer's events (every process; only rank 0 serves)."""

    def __init__(self, metrics: TrainerMetrics):
        self.metrics = metrics

    def on_train_begin(self, args, state, control, **kwargs):
        self.metrics.on_train_begin(state.global_step, state.max_steps or None, float(state.num_input_tokens_seen or 0))

    def on_step_end(self, args, state, control, **kwargs):
        self.metrics.on_step(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.metrics.on_log(logs or {}, state.global_step, float(state.num_input_tokens_seen or 0))


# ---- one registry and one server per process ------------------------------------------------------

_lock = threading.Lock()
_process_metrics: TrainerMetrics | None = None


def metrics_port() -> int | None:
    """`$REFINERY_METRICS_PORT` (`0`: off), else 9400 in a pod, else None (off)."""
    raw = os.environ.get(PORT_ENV, "").strip()
    if raw:
        return int(raw) or None
    return POD_DEFAULT_PORT if os.environ.get("KUBERNETES_SERVICE_HOST") else None


def process_metrics() -> TrainerMetrics | None:
    """This process's registry, once `metrics_callbacks` started it (None when metrics are off)."""
    return _process_metrics


def metrics_callbacks(ctx: StageContext) -> list[TrainerCallback]:
    """`[MetricsCallback]` serving on `metrics_port()` from rank 0, or `[]` when metrics are off."""
    global _process_metrics
    port = metrics_port()
    if port is None or not ctx.is_main_process:
        return []
    with _lock:
        if _process_metrics is None:
            metrics = TrainerMetrics(ctx.run.pipeline, ctx.stage.name, str(ctx.stage.type))
            try:
                metrics.serve(port)
            except OSError as exc:  # a busy port must not fail training: metrics are best effort
                log.warning("metrics: cannot serve on port %s (%s); set %s to another port", port, exc, PORT_ENV)
                return []
            log.info("metrics: serving on :%d/metrics", port)
            _process_metrics = metrics
    return [MetricsCallback(_process_metrics)]
