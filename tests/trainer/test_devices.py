"""Precision, gradient checkpointing, effective batch size and tokens/s: what the spec asks, what runs."""

from __future__ import annotations

import types

import pytest

from refinery.api.run import StageRun
from refinery_trainer import cli
from refinery_trainer.callbacks import ProgressCallback
from refinery_trainer.context import StageContext
from refinery_trainer.throughput_callback import ThroughputCallback
from refinery_trainer.devices import PrecisionError, effective_batch_size, precision_kwargs

from .conftest import TINY_MODEL, make_corpus, read_json, stage_run, write_config

FP32 = {"bf16": False, "fp16": False}


@pytest.fixture(autouse=True)
def _own_termination_log(tmp_path, monkeypatch):
    """Failures here must not overwrite the session's termination log, which other tests read."""
    monkeypatch.setenv("REFINERY_TERMINATION_LOG", str(tmp_path / "termination-log"))


@pytest.mark.parametrize("precision, cuda, bf16_supported, expected", [
    ("auto", False, False, FP32),                       # CPU: always fp32
    ("auto", True, True, {"bf16": True, "fp16": False}),  # Ampere and newer
    ("auto", True, False, FP32),                        # older GPUs: fp32, never a silent fp16
    ("fp32", True, True, FP32),
    ("bf16", True, True, {"bf16": True, "fp16": False}),
    ("fp16", True, False, {"bf16": False, "fp16": True}),
])
def test_precision_choice(precision, cuda, bf16_supported, expected):
    assert precision_kwargs(precision, cuda=cuda, bf16_supported=bf16_supported) == expected


@pytest.mark.parametrize("precision, cuda, needle", [
    ("bf16", False, "needs a CUDA GPU"), ("fp16", False, "needs a CUDA GPU"), ("bf16", True, "no bf16 support"),
])
def test_unsupported_precision_is_an_error(precision, cuda, needle):
    with pytest.raises(PrecisionError, match=needle) as err:
        precision_kwargs(precision, cuda=cuda, bf16_supported=False)
    assert err.value.reason == "UnsupportedPrecision"


def test_effective_batch_size():
    assert effective_batch_size(8, 4) == 32 and effective_batch_size(8, 4, world_size=2) == 64


def context(workspace, **training) -> StageContext:
    run = stage_run(workspace, "sft", "sft", data={"path": "d.jsonl"}, from_="x", training=training)
    return StageContext(StageRun.model_validate(run))


def test_training_args_follow_the_spec(workspace):
    kwargs = context(workspace, gradientCheckpointing=True, gradientAccumulationSteps=4).training_args_kwargs()
    assert kwargs["activation_checkpointing"] is True and kwargs["gradient_accumulation_steps"] == 4
    assert kwargs["bf16"] is False and kwargs["fp16"] is False  # this machine has no GPU
    assert kwargs["include_num_input_tokens_seen"] == "non_padding"
    assert context(workspace).training_args_kwargs()["activation_checkpointing"] is False


def test_fp16_on_cpu_fails_the_stage_with_a_clear_reason(workspace, capsys):
    make_corpus(workspace / "corpus.txt", docs=40)
    run = stage_run(workspace, "pretrain", "pretrain", data={"path": "corpus.txt"}, model=TINY_MODEL,
                    training={"precision": "fp16"})
    assert cli.main(["run", "--config", str(write_config(workspace / "run.yaml", run))]) == cli.EXIT_FAILED
    progress = read_json(workspace / "p" / "pretrain" / "progress.json")
    assert progress["failureReason"] == "UnsupportedPrecision" and "training.precision=fp16" in progress["message"]
    assert "Traceback" not in capsys.readouterr().err


def test_progress_reports_effective_batch_and_the_throughput_of_each_training_log(workspace):
    ctx = context(workspace, batchSize=8, gradientAccumulationSteps=2)
    now = [100.0]
    throughput, progress = ThroughputCallback(ctx, clock=lambda: now[0], peak=None), ProgressCallback(ctx)
    args = types.SimpleNamespace(per_device_train_batch_size=8, gradient_accumulation_steps=2, world_size=3)
    state = types.SimpleNamespace(global_step=0, max_steps=10, num_input_tokens_seen=0, is_world_process_zero=True)
    for callback in (throughput, progress):
        callback.on_train_begin(args, state, None)
    assert ctx.reporter.record.metrics["effectiveBatchSize"] == 48

    def step(seconds: float, tokens: int, idle: float = 0.0):
        throughput.on_step_begin(args, state, None)
        now[0] += seconds
        state.global_step, state.num_input_tokens_seen = state.global_step + 1, state.num_input_tokens_seen + tokens
        throughput.on_step_end(args, state, None)
        now[0] += idle  # a checkpoint save or an evaluation between steps: not training time

    def log(logs):
        for callback in (throughput, progress):
            callback.on_log(args, state, None, logs=logs)

    step(1.0, 2500, idle=30.0)
    step(1.0, 2500)
    log({"loss": 1.0})
    assert ctx.reporter.record.metrics["tokensPerSecond"] == 2500.0
    assert "mfu" not in ctx.reporter.record.metrics  # a CPU: no peak, no MFU (absent, not 0)
    log({"eval_loss": 1.0})  # evaluations do not count
    step(2.0, 3000)
    log({"loss": 0.5})
    assert ctx.reporter.record.metrics["tokensPerSecond"] == 1500.0  # 3000 tokens over the 2 s of steps since the last log
    assert ctx.throughput == {"tokensPerSecond": 2000.0}  # 8000 tokens over 4 s of steps: the attempt's figure
