"""spec.tracking.wandb in offline mode: a run per stage run, grouped by the pipeline, that a retried
attempt resumes; transformers' WandbCallback logs every training log with its step; the spec and
lineage in the run's config, the final metrics in its summary, the model as an artifact — read
back from the transaction log W&B writes on the volume for `wandb sync`."""

from __future__ import annotations

import pytest

from tests.wandb_records import OfflineRun

from .conftest import read_json, stage_run
from .example_task import DATA, MODEL, run_stage

pytestmark = pytest.mark.slow


def test_a_stage_run_is_grouped_by_its_pipeline_and_resumed_by_a_retry(workspace, monkeypatch):
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(workspace / ".wandb-config"))  # not the user's own settings
    tracking = {"wandb": {"project": "refinery-tests", "mode": "offline", "logModel": True}}
    training = {"maxSteps": 20, "saveSteps": 10, "loggingSteps": 5, "seqLen": 128}
    data = {"path": str(DATA / "pretrain.txt")}
    run_stage(workspace, stage_run(workspace, "pt", "pretrain", data=data, training=training, model=MODEL, tracking=tracking))
    # attempt 2 of a longer stage: the same W&B run, resumed from step 20
    run_stage(workspace, stage_run(workspace, "pt", "pretrain", data=data, training={**training, "maxSteps": 30},
                                   model=MODEL, tracking=tracking, attempt=2))

    stage_dir = workspace / "p" / "pt"
    run_id = read_json(stage_dir / "wandb-run.json")["runId"]
    first, second = (OfflineRun(folder) for folder in sorted((stage_dir / "wandb").glob("offline-run-*")))
    for attempt in (first, second):
        assert (attempt.run.run_id, attempt.run.project, attempt.run.run_group, attempt.run.job_type,
                attempt.run.display_name) == (run_id, "refinery-tests", "p", "pretrain", "pt")
        assert attempt.exit_code == 0
    config = first.config["refinery"]
    assert config["training"]["maxSteps"] == 20 and config["lineage"]["stage"] == "pt"
    assert config["lineage"]["image"] == "local" and config["namespace"] == "local"
    assert "learning_rate" in first.config  # the TrainingArguments, from transformers' callback

    losses = [(row["train/global_step"], row["train/loss"]) for attempt in (first, second) for row in attempt.history
              if "train/loss" in row]
    assert [step for step, _ in losses] == [5, 10, 15, 20, 25, 30], losses  # both attempts, one run's history
    assert losses[-1][1] < losses[0][1], losses  # it trained
    assert second.summary["refinery/attempt"] == 2 and second.summary["final/trainLoss"] > 0, second.summary
    [artifact] = second.artifacts
    assert artifact.type == "model" and artifact.name == "p-pt"
    assert {"config.json", "model.safetensors"} <= {entry.path for entry in artifact.manifest.contents}


def test_online_without_an_api_key_is_misconfigured_and_says_where_the_key_goes(workspace, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(workspace / ".wandb-config"))  # no key saved by `wandb login` either
    monkeypatch.setenv("HOME", str(workspace))  # nor in ~/.netrc
    from refinery_trainer import cli

    from .conftest import write_config

    run = stage_run(workspace, "pt", "pretrain", data={"path": str(DATA / "pretrain.txt")}, training={"maxSteps": 5},
                    model=MODEL, tracking={"wandb": {"project": "refinery-tests"}})
    assert cli.main(["run", "--config", str(write_config(workspace / "pt.yaml", run))]) == 1
    progress = read_json(workspace / "p" / "pt" / "progress.json")
    assert progress["failureReason"] == "Misconfigured", progress  # not retried: no retry finds a key
    assert "WANDB_API_KEY" in progress["message"] and "secretKeyRef" in progress["message"], progress
