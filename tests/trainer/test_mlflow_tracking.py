"""spec.tracking.mlflow against a real MLflow tracking server: a parent run per pipeline, a nested
run per stage that a retry continues, every training log with its step, the spec as parameters,
lineage tags and the final model as an artifact — read back through MLflow's own client."""

from __future__ import annotations

import pytest

from .conftest import read_json, stage_run
from .example_task import DATA, MODEL, run_stage

pytestmark = pytest.mark.slow


def test_stages_log_nested_runs_that_a_retry_continues(mlflow_server, workspace):
    client = mlflow_server.client()
    tracking = {"mlflow": {"trackingUri": mlflow_server.url, "experiment": "refinery-tests", "logModel": True}}
    training = {"maxSteps": 20, "saveSteps": 10, "loggingSteps": 5, "seqLen": 128}
    data = {"path": str(DATA / "pretrain.txt")}
    run_stage(workspace, stage_run(workspace, "pt", "pretrain", data=data, training=training, model=MODEL, tracking=tracking))
    # attempt 2 of a longer stage: the same run, continued from step 20
    run_stage(workspace, stage_run(workspace, "pt", "pretrain", data=data, training={**training, "maxSteps": 30},
                                   model=MODEL, tracking=tracking, attempt=2))
    run_stage(workspace, stage_run(workspace, "pt2", "pretrain", data=data, training={"maxSteps": 5}, model=MODEL,
                                   tracking=tracking))

    experiment = client.get_experiment_by_name("refinery-tests")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"p", "pt", "pt2"}, set(runs)  # the pipeline ("p") and one run per stage
    parent, stage = runs["p"], runs["pt"]
    assert stage.data.tags["mlflow.parentRunId"] == parent.info.run_id == runs["pt2"].data.tags["mlflow.parentRunId"]
    assert read_json(workspace / "p" / "pt" / "mlflow-run.json")["runId"] == stage.info.run_id
    assert stage.info.status == "FINISHED" and stage.data.tags["refinery.attempt"] == "2"

    losses = client.get_metric_history(stage.info.run_id, "loss")
    assert [m.step for m in losses] == [5, 10, 15, 20, 25, 30]  # both attempts, in one history
    assert losses[-1].value < losses[0].value  # it trained
    assert stage.data.params["refinery.training.maxSteps"] == "20"  # the first attempt's, never changed
    assert stage.data.tags["refinery.type"] == "pretrain" and stage.data.tags["refinery.stage"] == "pt"
    assert stage.data.tags["refinery.image"] == "local"  # the image, in a cluster (local mode has none)
    assert "evalLoss" in stage.data.metrics or "trainLoss" in stage.data.metrics, stage.data.metrics
    artifacts = {a.path for a in client.list_artifacts(stage.info.run_id, "model")}
    assert {"model/config.json", "model/model.safetensors"} <= artifacts, artifacts


def test_an_unreachable_server_fails_the_stage_with_a_reason_that_is_retried(workspace, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own back-off would take a minute
    tracking = {"mlflow": {"trackingUri": "http://127.0.0.1:9", "experiment": "x"}}
    run = stage_run(workspace, "pt", "pretrain", data={"path": str(DATA / "pretrain.txt")}, training={"maxSteps": 5},
                    model=MODEL, tracking=tracking)
    from refinery_trainer import cli

    from .conftest import write_config

    config = write_config(workspace / "pt.yaml", run)
    assert cli.main(["run", "--config", str(config)]) == 1
    progress = read_json(workspace / "p" / "pt" / "progress.json")
    assert progress["failureReason"] == "TrackingUnavailable" and "127.0.0.1:9" in progress["message"], progress
