"""spec.tracking.mlflow: a parent run per pipeline, a nested run per stage run (api/tracking.py).

    tracker = StageTracker.start(ctx)     # rank 0; None without spec.tracking.mlflow
    callbacks += [tracker.callback()]     # transformers' MLflowCallback, into the stage's run
    tracker.succeeded(result)             # final metrics, lineage tags, the model; FINISHED
    tracker.failed(reason)                # FAILED (a retry continues the same run)

The run ids live on the volume beside what they describe: `<pipeline>/mlflow-run.json` (the
parent) and `<stage>/mlflow-run.json` (the stage's; a re-run of the stage trains in a folder of
its own, so it gets a run of its own). Parallel stages race to create the parent: the first takes
an exclusive lock file (O_CREAT|O_EXCL, which holds on the shared volume across pods), the others
wait for the id it writes. The MLflow client does the talking; transformers' own callback logs
the training, pointed at the stage's run through MLFLOW_RUN_ID as its documentation says.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpoints import atomic_write_text
from .tracking import TrackingUnavailable, pipeline_root, stage_tags

if TYPE_CHECKING:
    from .context import StageContext

log = logging.getLogger(__name__)

RUN_FILE = "mlflow-run.json"
LOCK_WAIT_S = 60.0  # a lock older than this was left by a process that died holding it
PARAM_LIMIT = 6000  # MLflow's longest parameter value (server side: 6000 characters)


def flatten(prefix: str, value: Any) -> dict[str, str]:
    """A spec as dotted parameters: refinery.training.learningRate = 0.003."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(flatten(f"{prefix}.{key}", item))
        return out
    return {prefix: json.dumps(value)[:PARAM_LIMIT] if isinstance(value, list) else str(value)[:PARAM_LIMIT]}


class StageTracker:
    def __init__(self, client, run_id: str, parent_id: str, spec) -> None:
        self.client, self.run_id, self.parent_id, self.spec = client, run_id, parent_id, spec

    @classmethod
    def start(cls, ctx: StageContext) -> StageTracker | None:
        spec = ctx.run.tracking.mlflow if ctx.run.tracking else None
        if spec is None or not ctx.is_main_process:
            return None
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=spec.tracking_uri)
        try:
            experiment = experiment_id(client, spec.experiment or ctx.run.pipeline)
            parent = find_or_create(pipeline_root(ctx) / RUN_FILE, lambda: client.create_run(
                experiment, run_name=ctx.run.pipeline, tags={"refinery.pipeline": ctx.run.pipeline,
                                                             "refinery.namespace": ctx.run.namespace or "local"}))
            run = find_or_create(ctx.stage_dir / RUN_FILE, lambda: client.create_run(
                experiment, run_name=ctx.stage.name, tags={"mlflow.parentRunId": parent, **stage_tags(ctx)}))
            client.update_run(run, status="RUNNING")
            client.set_tag(run, "refinery.attempt", str(ctx.attempt))
            client.log_batch(run, params=params(ctx, client, run))
        except (MlflowException, OSError) as exc:
            raise TrackingUnavailable(f"spec.tracking.mlflow: {spec.tracking_uri} did not take the stage's run: "
                                      f"{type(exc).__name__}: {str(exc)[:300]}") from exc
        # transformers' MLflowCallback reads these when training begins (its documented settings).
        os.environ.update(MLFLOW_TRACKING_URI=spec.tracking_uri, MLFLOW_RUN_ID=run)
        log.info("mlflow: stage run %s (parent %s) at %s", run, parent, spec.tracking_uri)
        return cls(client, run, parent, spec)

    def callback(self):
        from transformers.integrations import MLflowCallback

        return MLflowCallback()

    def succeeded(self, result: dict) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(result.get("steps") or 0)
        metrics = result.get("metrics", {})
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])
        if metrics and result.get("type") == "eval":  # the scores, on the pipeline's run too
            stage = result["stage"]
            self.client.log_batch(self.parent_id, metrics=[Metric(f"{stage}.{k}", v, now, 0) for k, v in metrics.items()])
        self.client.set_tag(self.run_id, "refinery.output", str(result.get("output")))
        if self.spec.log_model and result.get("output") and Path(result["output"]).is_dir():
            self.client.log_artifacts(self.run_id, result["output"], artifact_path="model")
        self.client.set_terminated(self.run_id, "FINISHED")

    def failed(self, reason: str) -> None:
        try:
            self.client.set_tag(self.run_id, "refinery.failure", reason)
            self.client.set_terminated(self.run_id, "FAILED")
        except Exception as exc:  # noqa: BLE001 - the stage's own failure is what must be reported
            log.warning("mlflow: could not mark run %s failed: %s", self.run_id, type(exc).__name__)


def experiment_id(client, name: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # another stage created it meanwhile
        return client.get_experiment_by_name(name).experiment_id


def find_or_create(path: Path, create) -> str:
    """The run id kept in `path`, or a new run's (created by one process only)."""
    lock = path.with_name(path.name + ".lock")
    deadline = time.monotonic() + 2 * LOCK_WAIT_S
    while True:
        if path.is_file():
            return json.loads(path.read_text())["runId"]
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if time.time() - lock.stat().st_mtime > LOCK_WAIT_S:
                lock.unlink(missing_ok=True)  # its holder died
            elif time.monotonic() > deadline:
                raise OSError(f"{lock} is held and {path} never appeared") from None
            time.sleep(0.2)
            continue
        try:
            if path.is_file():  # written between our look and our lock
                return json.loads(path.read_text())["runId"]
            run = create()
            atomic_write_text(path, json.dumps({"runId": run.info.run_id, "experimentId": run.info.experiment_id}) + "\n")
            return run.info.run_id
        finally:
            os.close(fd)
            lock.unlink(missing_ok=True)


def params(ctx: StageContext, client, run_id: str):
    """The stage's spec as parameters, less what the run already has (a retry logs only what is new;
    MLflow refuses to change a parameter)."""
    from mlflow.entities import Param

    have = client.get_run(run_id).data.params
    spec = flatten("refinery", ctx.stage.model_dump(by_alias=True, exclude_none=True, mode="json"))
    return [Param(k, v) for k, v in spec.items() if k not in have]
