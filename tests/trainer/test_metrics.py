"""Trainer metrics: drive MetricsCallback with the log dicts a Trainer emits, scrape, promtool-check."""

from __future__ import annotations

import types
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from refinery.api.run import StageRun
from refinery_trainer import metrics
from refinery_trainer.context import StageContext
from refinery_trainer.metrics import MetricsCallback, TrainerMetrics
from refinery_trainer.report import Reporter
from tests.tools import check_metrics

from .conftest import stage_run

LABELS = {"pipeline": "chat", "stage": "policy", "type": "rlhf"}


def state(step: int, max_steps: int = 100, tokens: int = 0):
    return types.SimpleNamespace(global_step=step, max_steps=max_steps, num_input_tokens_seen=tokens)


def values(m: TrainerMetrics) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for s in family.samples:
            out[s.name, frozenset(s.labels.items())] = s.value
    return out


def value(m: TrainerMetrics, name: str, **extra) -> float | None:
    return values(m).get((name, frozenset({**LABELS, **extra}.items())))


@pytest.fixture
def rlhf_run():
    m = TrainerMetrics("chat", "policy", "rlhf", clock=lambda: 1_750_000_000.0)
    cb = MetricsCallback(m)
    cb.on_train_begin(None, state(0), None)
    for step in range(1, 11):
        cb.on_step_end(None, state(step), None)
        if step % 5 == 0:  # what RLOOTrainer logs every loggingSteps
            cb.on_log(None, state(step), None, logs={
                "loss": 0.5 / step, "learning_rate": 1e-5, "grad_norm": 1.5, "epoch": step / 20,
                "reward": 0.1 * step, "reward_std": 0.2, "kl": 0.01 * step, "num_tokens": 1000.0 * step,
                "completions/mean_length": 12.0,
            })
    cb.on_log(None, state(10), None, logs={"eval_loss": 0.7, "eval_reward": 0.9, "eval_runtime": 3.2,
                                          "eval_samples_per_second": 10.0})
    return m


def test_training_logs_become_gauges_and_counters(rlhf_run):
    m = rlhf_run
    assert value(m, "refinery_trainer_step") == 10
    assert value(m, "refinery_trainer_max_steps") == 100
    assert value(m, "refinery_trainer_steps_total") == 10
    assert value(m, "refinery_trainer_loss") == pytest.approx(0.05)
    assert value(m, "refinery_trainer_learning_rate") == 1e-5
    assert value(m, "refinery_trainer_reward") == pytest.approx(1.0)
    assert value(m, "refinery_trainer_kl") == pytest.approx(0.1)
    assert value(m, "refinery_trainer_tokens_total") == 10_000
    assert value(m, "refinery_trainer_epoch") == 0.5
    assert value(m, "refinery_trainer_last_log_timestamp_seconds") == 1_750_000_000.0


def test_evaluation_metrics_without_timings(rlhf_run):
    m = rlhf_run
    assert value(m, "refinery_trainer_eval_loss") == 0.7
    assert value(m, "refinery_trainer_eval_metric", metric="reward") == 0.9
    assert value(m, "refinery_trainer_eval_metric", metric="runtime") is None
    assert value(m, "refinery_trainer_eval_metric", metric="samples_per_second") is None


def test_a_resumed_run_counts_only_its_own_tokens_and_steps():
    m = TrainerMetrics("chat", "sft", "sft")
    cb = MetricsCallback(m)
    cb.on_train_begin(None, state(40, tokens=50_000), None)  # resumed from checkpoint-40
    cb.on_step_end(None, state(41), None)
    cb.on_log(None, state(41, tokens=51_200), None, logs={"loss": 1.0})  # plain Trainer: tokens from state
    assert value(m, "refinery_trainer_tokens_total", stage="sft", type="sft") == 1_200
    assert value(m, "refinery_trainer_steps_total", stage="sft", type="sft") == 1
    assert value(m, "refinery_trainer_step", stage="sft", type="sft") == 41


def test_a_nan_loss_is_not_exported():
    m = TrainerMetrics("chat", "sft", "sft")
    m.on_log({"loss": 2.0})
    m.on_log({"loss": float("nan")})
    assert value(m, "refinery_trainer_loss", stage="sft", type="sft") == 2.0


def test_every_documented_metric_appears_and_the_scrape_passes_promtool(rlhf_run):
    text = generate_latest(rlhf_run.registry).decode()
    exposed = {f.name for f in text_string_to_metric_families(text) if not f.name.endswith("_created")}
    assert exposed == {d.name.removesuffix("_total") for d in metrics.METRICS}
    check_metrics(text)


@pytest.mark.parametrize(("env", "port"), [
    ({}, None),  # local mode: off
    ({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, 9400),  # in a pod: on by default
    ({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "REFINERY_METRICS_PORT": "0"}, None),
    ({"REFINERY_METRICS_PORT": "9555"}, 9555),
])
def test_the_port_comes_from_the_environment(monkeypatch, env, port):
    for name in ("KUBERNETES_SERVICE_HOST", "REFINERY_METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, val in env.items():
        monkeypatch.setenv(name, val)
    assert metrics.metrics_port() == port


def test_stage_context_serves_metrics_when_a_port_is_set(monkeypatch, workspace):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("REFINERY_METRICS_PORT", raising=False)
    run = StageRun.model_validate(stage_run(workspace, "sft", "sft", data={"path": "d.jsonl"}, from_="pre"))
    ctx = StageContext(run, reporter=Reporter(None))
    assert not any(isinstance(c, MetricsCallback) for c in ctx.callbacks())  # off by default in local mode

    served = {}
    monkeypatch.setattr(metrics, "_process_metrics", None)
    monkeypatch.setattr(TrainerMetrics, "serve", lambda self, port, addr="0.0.0.0": served.update(port=port))
    monkeypatch.setenv("REFINERY_METRICS_PORT", "9401")
    callback = next(c for c in ctx.callbacks() if isinstance(c, MetricsCallback))
    assert served == {"port": 9401}
    assert callback.metrics.labels == {"pipeline": "p", "stage": "sft", "type": "sft"}
    assert next(c for c in ctx.callbacks() if isinstance(c, MetricsCallback)).metrics is callback.metrics  # one per process


def test_served_over_http():
    m = TrainerMetrics("chat", "sft", "sft")
    m.on_log({"loss": 1.25, "learning_rate": 3e-4})
    server, _ = m.serve(0, addr="127.0.0.1")
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
    assert 'refinery_trainer_loss{pipeline="chat",stage="sft",type="sft"} 1.25' in body
    check_metrics(body)
