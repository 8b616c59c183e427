"""spec.tracking: TensorBoard event files per stage attempt, read back with TensorBoard's own reader."""

from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from .conftest import stage_run
from .example_task import DATA, MODEL, example_models, model_dir, run_stage
from .test_rlhf_ppo import ppo_run

pytestmark = pytest.mark.slow

TRACKING = {"tensorboard": {}}


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def logged_losses(stage_dir) -> list[tuple[int, float]]:
    """(step, loss) of every training log in the attempts' metrics.jsonl."""
    lines = [json.loads(line) for path in sorted(stage_dir.glob("attempt-*/metrics.jsonl"))
             for line in path.read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if "loss" in r]


def test_each_attempt_writes_its_own_run_with_every_training_log_and_evaluation(workspace):
    training = {"maxSteps": 20, "saveSteps": 10, "loggingSteps": 5, "evalSteps": 10, "seqLen": 128}
    data = {"path": str(DATA / "pretrain.txt"), "evalPath": str(DATA / "pretrain.txt")}
    first = stage_run(workspace, "pt", "pretrain", data=data, training=training, model=MODEL, tracking=TRACKING)
    run_stage(workspace, first)
    # A second attempt of a longer stage resumes from step 20 and gets a run of its own.
    second = stage_run(workspace, "pt", "pretrain", data=data, training={**training, "maxSteps": 30}, model=MODEL,
                       tracking=TRACKING, attempt=2)
    run_stage(workspace, second)

    stage_dir = workspace / "p" / "pt"
    one, two = scalars(stage_dir / "tensorboard" / "attempt-1"), scalars(stage_dir / "tensorboard" / "attempt-2")
    assert [step for step, _ in one["train/loss"]] == [5, 10, 15, 20]
    assert [step for step, _ in two["train/loss"]] == [25, 30]
    # The initial model's evaluation (step 0), every evalSteps, and the final one.
    evals = one["eval/loss"]
    assert {step for step, _ in evals} == {0, 10, 20} and evals[-1][1] < evals[0][1], evals
    # The very values of metrics.jsonl (the loss fell: the stage trained), tokens/s alongside.
    logged = dict(logged_losses(stage_dir))
    for step, value in one["train/loss"] + two["train/loss"]:
        assert value == pytest.approx(logged[step], rel=1e-5), step
    assert one["train/loss"][-1][1] < one["train/loss"][0][1]
    assert "train/tokens_per_second" in one


def test_no_tracking_writes_no_event_files(workspace):
    data = {"path": str(DATA / "pretrain.txt")}
    run_stage(workspace, stage_run(workspace, "quiet", "pretrain", data=data, training={"maxSteps": 5}, model=MODEL))
    assert not (workspace / "p" / "quiet" / "tensorboard").exists()


def test_the_ppo_loop_reports_its_rewards_to_tensorboard(tmp_path_factory, workspace):
    example = example_models(tmp_path_factory.getbasetemp() / "example")
    run = ppo_run(workspace, example, name="ppo-tb", tracking=TRACKING,
                  training={"maxSteps": 4, "saveSteps": 4, "loggingSteps": 2, "learningRate": 3e-4})
    run_stage(workspace, run)
    logged = scalars(workspace / "p" / "ppo-tb" / "tensorboard" / "attempt-1")
    assert [step for step, _ in logged["train/reward"]] == [2, 4], sorted(logged)
    assert model_dir(workspace, "ppo-tb").is_dir()


def test_without_tensorboard_installed_the_stage_is_misconfigured_with_what_to_install(monkeypatch, tmp_path):
    import transformers.integrations

    from refinery.api.run import StageRun
    from refinery_trainer.errors import MisconfiguredError
    from refinery_trainer.tracking import tracking_callbacks

    class Missing:
        def __init__(self):
            raise RuntimeError("TensorBoardCallback requires tensorboard to be installed.")

    monkeypatch.setattr(transformers.integrations, "TensorBoardCallback", Missing)
    run = StageRun.model_validate(stage_run(tmp_path, "pt", "pretrain", data={"path": "x.txt"}, model=MODEL,
                                            tracking=TRACKING))
    ctx = type("Ctx", (), {"run": run, "stage_dir": tmp_path / "p" / "pt", "trackers": []})()
    with pytest.raises(MisconfiguredError, match=r"pip install 'refinery\[tracking\]'"):
        tracking_callbacks(ctx)
