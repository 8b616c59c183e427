"""StageContext: paths, training kwargs that every trainer config accepts, final-model swap, NaN check."""

from __future__ import annotations

import math
import types

import pytest

from refinery.api.run import StageRun
from refinery_trainer.context import StageContext, camel_metrics
from refinery_trainer.errors import ModelError, NanLossError
from refinery_trainer.report import Reporter

from .conftest import stage_run


@pytest.fixture
def ctx(workspace):
    run = stage_run(workspace, "sft", "sft", data={"path": "data/sft.jsonl"}, from_="pre",
                    training={"maxSteps": 30, "saveSteps": 10, "keepCheckpoints": 2, "evalSteps": 5, "warmupRatio": 0.1})
    return StageContext(StageRun.model_validate(run), reporter=Reporter(None))


def test_paths_follow_the_layout(ctx, workspace):
    assert ctx.attempt_dir == workspace / "p" / "sft" / "attempt-1"
    assert ctx.checkpoints_dir == ctx.attempt_dir / "checkpoints"
    assert ctx.model_dir == workspace / "p" / "sft" / "model"
    assert ctx.result_path.name == "result.json"
    assert ctx.data_file("data/x.jsonl") == workspace / "data" / "x.jsonl"
    assert ctx.data_file("/abs/x.jsonl").as_posix() == "/abs/x.jsonl"
    assert ctx.resume_checkpoint is None


def test_init_model_must_be_a_saved_model(ctx):
    with pytest.raises(ModelError, match="no init_model"):
        ctx.init_model_dir


def test_training_kwargs_fit_transformers_and_trl_configs(ctx):
    from transformers import TrainingArguments
    from trl import SFTConfig

    kwargs = ctx.training_args_kwargs()
    for cls in (TrainingArguments, SFTConfig):
        args = cls(**kwargs)
        assert args.max_steps == 30 and args.save_steps == 10 and args.eval_steps == 5
        assert args.save_total_limit is None  # rotated by our marker callback, after the marker
        assert args.output_dir == str(ctx.checkpoints_dir) and args.report_to == []
        assert args.activation_checkpointing is False and not args.bf16
    assert ctx.training_args_kwargs(learning_rate=1e-5)["learning_rate"] == 1e-5


def test_save_final_replaces_an_old_model(ctx):
    class Saved:
        def __init__(self, text):
            self.text = text

        def save_pretrained(self, path):
            path.mkdir(parents=True, exist_ok=True)
            (path / "config.json").write_text(self.text)

    ctx.stage_dir.mkdir(parents=True)
    ctx.save_final(Saved("old"))
    assert ctx.save_final(Saved("new"), Saved("new")) == ctx.model_dir
    assert (ctx.model_dir / "config.json").read_text() == "new"
    assert sorted(p.name for p in ctx.stage_dir.iterdir()) == ["model"]


def test_nan_loss_fails_the_stage(ctx):
    progress = ctx.callbacks()[-1]
    state = types.SimpleNamespace(global_step=7, max_steps=30, is_world_process_zero=True)
    with pytest.raises(NanLossError, match="loss became nan at step 7") as err:
        progress.on_log(None, state, None, logs={"loss": math.nan})
    assert err.value.reason == "NanLoss"


def test_camel_metrics():
    assert camel_metrics({"eval_loss": 1, "eval_runtime": 2, "eval_mean_token_accuracy": 0.5}, prefix="initial") == {
        "initialEvalLoss": 1.0, "initialEvalMeanTokenAccuracy": 0.5}
