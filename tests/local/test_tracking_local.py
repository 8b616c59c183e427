"""What a run of the example logged to a real MLflow tracking server (spec.tracking.mlflow), read
back through MLflow's client: the pipeline's run, a nested run per stage, each training log's
history, the lineage tags, the eval scores and the exported stage's model."""

from __future__ import annotations

import pytest

from .conftest import EXPERIMENT

pytestmark = pytest.mark.slow

STAGES = ("pretrain", "sft", "reward", "rlhf", "eval", "export")


def test_the_example_logged_a_run_per_stage_under_the_pipelines_run(example_run, mlflow_server):
    code, _, status, _, _ = example_run
    assert code == 0
    client = mlflow_server.client()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"tiny-chat", *STAGES}, sorted(runs)
    parent = runs["tiny-chat"].info.run_id
    for name in STAGES:
        run = runs[name]
        assert run.data.tags["mlflow.parentRunId"] == parent and run.info.status == "FINISHED", name
        assert run.data.tags["refinery.stage"] == name
    sft = runs["sft"]
    print(f"\nmlflow: {len(runs)} runs; sft: {len(sft.data.params)} parameters, metrics {sorted(sft.data.metrics)}")

    # Every training log of sft, with its step (maxSteps 500, loggingSteps 50), falling.
    losses = client.get_metric_history(sft.info.run_id, "loss")
    assert [m.step for m in losses] == list(range(50, 501, 50)), [m.step for m in losses]
    assert losses[-1].value < losses[0].value
    assert sft.data.params["refinery.training.maxSteps"] == "500" and sft.data.tags["refinery.from"] == "pretrain"
    # The final figures are the status's.
    final = next(s for s in status["stages"] if s["name"] == "sft")["metrics"]
    assert sft.data.metrics["evalLoss"] == pytest.approx(final["evalLoss"])
    # The eval stage's scores, on its run and on the pipeline's.
    scores = next(s for s in status["stages"] if s["name"] == "eval")["metrics"]
    assert runs["eval"].data.metrics["rlhf.exactMatch"] == pytest.approx(scores["rlhf.exactMatch"])
    assert runs["tiny-chat"].data.metrics["eval.rlhf.exactMatch"] == pytest.approx(scores["rlhf.exactMatch"])
    # logModel: each stage's final model is an artifact of its run.
    assert "model/model.safetensors" in {a.path for a in client.list_artifacts(runs["rlhf"].info.run_id, "model")}
