"""Operator metrics: statuses in, Prometheus exposition out, checked with promtool."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from refinery_operator import metrics
from refinery.api.v1alpha1 import PipelineStatus
from tests.builders import chat_pipeline
from tests.tools import check_metrics

T0 = 1_750_000_000.0  # 2025-06-15T15:06:40Z


def stamp(seconds: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status(phase="Running", **stages) -> PipelineStatus:
    return PipelineStatus.model_validate({"phase": phase, "stages": [{"name": n, **s} for n, s in stages.items()]})


class Clock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def registry(clock):
    return metrics.OperatorMetrics(clock=clock)


def scrape(m: metrics.OperatorMetrics) -> str:
    return generate_latest(m.registry).decode()


def samples(m: metrics.OperatorMetrics) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(scrape(m)):
        for s in family.samples:
            out[s.name, frozenset(s.labels.items())] = s.value
    return out


def value(m, name, **labels) -> float | None:
    return samples(m).get((name, frozenset(labels.items())))


STAGE = dict(namespace="ml", pipeline="chat", stage="sft")
SPEC = chat_pipeline("chat").obj().spec


def test_a_running_stage_sets_progress_checkpoint_and_duration(registry, clock):
    registry.record_pipeline("ml", "chat", status(sft=dict(
        phase="Running", attempt=1, progress=0.25, step=50, checkpoints=2, startTime=stamp(T0 - 600),
        lastCheckpoint={"step": 50, "path": "/workspace/x", "time": stamp(T0 - 30)},
    )), SPEC)
    assert value(registry, "refinery_stage_progress_ratio", **STAGE) == 0.25
    assert value(registry, "refinery_stage_step", **STAGE) == 50
    assert value(registry, "refinery_stage_checkpoints", **STAGE) == 2
    assert value(registry, "refinery_stage_last_checkpoint_step", **STAGE) == 50
    assert value(registry, "refinery_stage_last_checkpoint_timestamp_seconds", **STAGE) == T0 - 30
    assert value(registry, "refinery_stage_duration_seconds", **STAGE) == 600
    assert value(registry, "refinery_stage_phase", **STAGE, type="sft", phase="Running") == 1
    assert value(registry, "refinery_stage_phase", **STAGE, type="sft", phase="Pending") == 0
    clock.now += 60  # a running stage's duration is as fresh as the scrape
    assert value(registry, "refinery_stage_duration_seconds", **STAGE) == 660


def test_the_estimates_of_time_left_come_from_the_status_and_are_absent_without_one(registry):
    running = status(sft=dict(phase="Running", estimatedRemainingSeconds=42.5))
    running.estimated_remaining_seconds = 300
    registry.record_pipeline("ml", "chat", running, SPEC)
    assert value(registry, "refinery_stage_eta_seconds", **STAGE) == 42.5
    assert value(registry, "refinery_pipeline_eta_seconds", namespace="ml", pipeline="chat") == 300
    registry.record_pipeline("ml", "chat", status(sft=dict(phase="Running")), SPEC)
    assert value(registry, "refinery_stage_eta_seconds", **STAGE) is None
    assert value(registry, "refinery_pipeline_eta_seconds", namespace="ml", pipeline="chat") is None


def test_gpu_seconds_come_from_the_status(registry):
    registry.record_pipeline("ml", "chat", status(sft=dict(phase="Running", gpuSeconds=660.5, lostGpuSeconds=60.0)), SPEC)
    assert value(registry, "refinery_stage_gpu_seconds_total", **STAGE) == 660.5
    assert value(registry, "refinery_stage_lost_gpu_seconds_total", **STAGE) == 60.0


def test_pipelines_are_counted_by_phase_per_namespace(registry):
    registry.record_pipeline("ml", "a", status("Running"))
    registry.record_pipeline("ml", "b", status("Running"))
    registry.record_pipeline("ml", "c", status("Failed"))
    registry.record_pipeline("other", "d", status("Succeeded"))
    assert value(registry, "refinery_pipelines", namespace="ml", phase="Running") == 2
    assert value(registry, "refinery_pipelines", namespace="ml", phase="Failed") == 1
    assert value(registry, "refinery_pipelines", namespace="ml", phase="Succeeded") == 0
    assert value(registry, "refinery_pipelines", namespace="other", phase="Succeeded") == 1
    assert value(registry, "refinery_pipeline_phase", namespace="ml", pipeline="c", phase="Failed") == 1


def test_forget_pipeline_removes_every_label_set(registry):
    registry.record_pipeline("ml", "chat", status(sft=dict(phase="Running", startTime=stamp(T0))), SPEC)
    registry.record_pipeline("ml", "keep", status())
    registry.forget_pipeline("ml", "chat")
    text = scrape(registry)
    assert 'pipeline="chat"' not in text
    assert 'pipeline="keep"' in text
    registry.forget_pipeline("ml", "never-seen")  # harmless


def test_restarts_are_counted_by_failure_class_from_the_status(registry):
    spec = chat_pipeline("chat").stage("big", "sft", from_="pretrain", resources={"gpus": 8}).obj().spec
    big = dict(namespace="ml", pipeline="chat", stage="big")
    registry.record_pipeline("ml", "chat", status(big=dict(phase="Running", attempt=4, restarts=3, restartsByClass={
        "application": 1, "infrastructure": 2, "disruption": 5}, lostGpuSeconds=8 * 660.0)), spec)
    assert value(registry, "refinery_stage_restarts_total", **big, **{"class": "disruption"}) == 5
    assert value(registry, "refinery_stage_retry_budget", **big, **{"class": "disruption"}) == 3
    assert value(registry, "refinery_stage_restarts_total", **big, **{"class": "infrastructure"}) == 2
    assert value(registry, "refinery_stage_restarts_total", **big, **{"class": "application"}) == 1
    assert value(registry, "refinery_stage_lost_gpu_seconds_total", **big) == 8 * 660
    assert value(registry, "refinery_stage_retry_budget", **big, **{"class": "infrastructure"}) == 3
    assert value(registry, "refinery_stage_gpus", **big) == 8


def test_a_finished_stage_keeps_its_duration(registry, clock):
    registry.record_pipeline("ml", "chat", status("Succeeded", sft=dict(
        phase="Succeeded", progress=1.0, startTime=stamp(T0 - 100), completionTime=stamp(T0 - 40))), SPEC)
    clock.now += 1000
    assert value(registry, "refinery_stage_duration_seconds", **STAGE) == 60
    assert value(registry, "refinery_stage_progress_ratio", **STAGE) == 1.0


def test_latency_histograms(registry):
    for seconds in (0.2, 0.3, 0.9, 4.0):
        registry.observe_checkpoint_latency(seconds)
    registry.observe_next_job_latency(0.5)
    assert value(registry, "refinery_checkpoint_status_latency_seconds_count") == 4
    assert value(registry, "refinery_checkpoint_status_latency_seconds_bucket", le="1.0") == 3
    assert value(registry, "refinery_next_job_latency_seconds_sum") == 0.5


def test_every_documented_metric_is_exposed_and_nothing_else(registry):
    registry.record_pipeline("ml", "chat", status(sft=dict(
        phase="Running", step=1, startTime=stamp(T0), lastCheckpoint={"step": 1, "path": "p", "time": stamp(T0)})), SPEC)
    # prometheus_client adds a `<histogram>_created` gauge (the series' start time) to each histogram
    exposed = {f.name for f in text_string_to_metric_families(scrape(registry)) if not f.name.endswith("_created")}
    documented = {d.name.removesuffix("_total") for d in metrics.METRICS}
    assert exposed == documented


def test_the_scrape_passes_promtool_check_metrics(registry):
    registry.record_pipeline("ml", "chat", status(sft=dict(
        phase="Running", step=5, progress=0.1, startTime=stamp(T0),
        lastCheckpoint={"step": 5, "path": "p", "time": stamp(T0)})), SPEC)
    registry.observe_checkpoint_latency(0.4)
    registry.observe_next_job_latency(0.4)
    check_metrics(scrape(registry))


def test_the_process_wide_instance_serves_over_http(monkeypatch):
    monkeypatch.setenv(metrics.PORT_ENV, "0")
    assert metrics.serve_from_environment(default=9) is None  # 0 turns metrics off
    server, thread = metrics.OPERATOR.serve(0, addr="127.0.0.1")
    try:
        metrics.record_pipeline("ml", "served", status())
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5).read().decode()
        assert 'refinery_pipeline_phase{namespace="ml",phase="Running",pipeline="served"} 1.0' in body
        assert "process_cpu_seconds_total" in body
        check_metrics(body)
    finally:
        metrics.forget_pipeline("ml", "served")
        server.shutdown()
