"""metrics.jsonl: every log of a stage, one JSON line each, in the attempt's folder (local mode plots it)."""

from __future__ import annotations

import json
import math
import types

import pytest

from refinery.api.run import METRICS_LOG_FILE
from refinery_trainer.callbacks import MetricsLogCallback

pytestmark = pytest.mark.slow


def read_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_log_of_the_pretrain_stage_is_one_line_with_its_step(pretrained):
    lines = read_lines(pretrained / "attempt-1" / METRICS_LOG_FILE)
    assert all(isinstance(line["step"], int) and line["time"] > 0 for line in lines)

    # The training logs are exactly the Trainer's own log history (saved with the last checkpoint).
    state = json.loads((pretrained / "attempt-1" / "checkpoints" / "checkpoint-60" / "trainer_state.json").read_text())
    expected = [(e["step"], e["loss"]) for e in state["log_history"] if "loss" in e]
    training = [(line["step"], line["loss"]) for line in lines if "loss" in line]
    assert training == expected
    assert [step for step, _ in training] == [10, 20, 30, 40, 50, 60]  # loggingSteps 10, maxSteps 60

    # Evaluations before and after training, and the end-of-training summary, are lines too.
    assert [line["step"] for line in lines if "eval_loss" in line] == [0, 60]
    assert [line["step"] for line in lines if "train_loss" in line] == [60]
    assert len(lines) == len(training) + 3

    losses = [loss for _, loss in training]
    assert losses[-1] < losses[0] - 1.0  # the loss falls: a learning curve, not noise
    assert sum(losses[3:]) / 3 < sum(losses[:3]) / 3


def test_only_rank_zero_writes_and_a_nan_becomes_null(tmp_path):
    ctx = types.SimpleNamespace(attempt_dir=tmp_path / "attempt-2")
    callback = MetricsLogCallback(ctx, clock=lambda: 1_750_000_000.0)
    state = types.SimpleNamespace(global_step=7, is_world_process_zero=True)
    callback.on_log(None, state, None, logs={"loss": math.nan, "learning_rate": 1e-3, "note": "text", "flag": True})
    callback.on_log(None, types.SimpleNamespace(global_step=7, is_world_process_zero=False), None, logs={"loss": 1.0})
    text = (tmp_path / "attempt-2" / METRICS_LOG_FILE).read_text()
    assert "NaN" not in text  # strict JSON
    assert read_lines(tmp_path / "attempt-2" / METRICS_LOG_FILE) == [
        {"step": 7, "time": 1_750_000_000.0, "loss": None, "learning_rate": 1e-3},
    ]
