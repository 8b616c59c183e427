"""spec.tracking.wandb: a Weights & Biases run per stage run, grouped by the pipeline (api/tracking.py).

    tracker = WandbTracker.start(ctx)     # rank 0; None without spec.tracking.wandb
    callbacks += [tracker.callback()]     # transformers' WandbCallback, into the stage's run
    tracker.succeeded(result)             # final metrics in the summary, the model; finished
    tracker.failed(reason)                # finished with exit code 1 (a retry resumes the same run)

The run is made here, before training, with the settings transformers' callback cannot give
(group, job type, a fixed id that a retried attempt resumes, the folder on the volume); the
callback then logs into it, as its documentation says it does for a run made by hand.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from refinery.api.tracking import WANDB_DIR

from .checkpoints import atomic_write_text
from .errors import MisconfiguredError
from .tracking import TrackingUnavailable, pipeline_root, stage_tags

if TYPE_CHECKING:
    from .context import StageContext

log = logging.getLogger(__name__)

RUN_FILE = "wandb-run.json"  # in the stage's folder: the run's id, so that every attempt resumes it
INIT_TIMEOUT_S = 120.0


def run_id(stage_dir: Path) -> str:
    """The stage run's W&B id: made by its first attempt (rank 0 only), read by every later one."""
    path = stage_dir / RUN_FILE
    if path.is_file():
        return json.loads(path.read_text())["runId"]
    new = secrets.token_hex(6)  # W&B run ids: lower-case letters, digits, - and _
    atomic_write_text(path, json.dumps({"runId": new}) + "\n")
    return new


class WandbTracker:
    def __init__(self, run, spec) -> None:
        self.run, self.spec = run, spec

    @classmethod
    def start(cls, ctx: StageContext) -> WandbTracker | None:
        spec = ctx.run.tracking.wandb if ctx.run.tracking else None
        if spec is None or not ctx.is_main_process:
            return None
        import wandb

        folder = ctx.stage_dir / WANDB_DIR
        folder.mkdir(parents=True, exist_ok=True)
        lineage = {key.removeprefix("refinery."): value for key, value in stage_tags(ctx).items()}
        config = {"refinery": {**ctx.stage.model_dump(by_alias=True, exclude_none=True, mode="json"),
                               "lineage": lineage, "namespace": ctx.run.namespace or "local",
                               "pipelineFolder": str(pipeline_root(ctx))}}
        try:
            run = wandb.init(
                project=spec.project, entity=spec.entity, mode=spec.mode, dir=str(ctx.stage_dir),
                id=run_id(ctx.stage_dir), resume="allow", name=ctx.stage.name, group=ctx.run.pipeline,
                job_type=str(ctx.stage.type), config=config, tags=["refinery", str(ctx.stage.type)],
                settings=wandb.Settings(init_timeout=INIT_TIMEOUT_S, silent=True, console="off"),
            )
        except wandb.errors.UsageError as exc:
            if "API key" not in str(exc):
                raise TrackingUnavailable(f"spec.tracking.wandb: {str(exc)[:300]}") from exc
            raise MisconfiguredError(  # no retry can find a key that was never given
                "spec.tracking.wandb: no W&B API key in the stage's environment: give the pipeline WANDB_API_KEY "
                "through env[].valueFrom.secretKeyRef or envFrom (or set mode: offline)") from exc
        except (wandb.errors.Error, OSError, TimeoutError) as exc:
            raise TrackingUnavailable(f"spec.tracking.wandb: project {spec.project!r} did not take the stage's run "
                                      f"({spec.mode}): {type(exc).__name__}: {str(exc)[:300]}") from exc
        run.summary["refinery/attempt"] = ctx.attempt
        # transformers' WandbCallback reads these when training begins: the model is ours to log, once.
        os.environ.update(WANDB_LOG_MODEL="false", WANDB_WATCH="false")
        log.info("wandb: stage run %s in %s (%s), files in %s", run.id, spec.project, spec.mode, folder)
        return cls(run, spec)

    def callback(self):
        from transformers.integrations import WandbCallback

        return WandbCallback()

    def succeeded(self, result: dict) -> None:
        import wandb

        self.run.summary.update({f"final/{k}": v for k, v in result.get("metrics", {}).items()})
        self.run.summary["refinery/output"] = str(result.get("output"))
        output = result.get("output")
        if self.spec.log_model and output and Path(output).is_dir():
            artifact = wandb.Artifact(f"{self.run.group}-{result['stage']}", type="model",
                                      metadata={"stage": result["stage"], "steps": result.get("steps"),
                                                "sources": result.get("sources")})
            artifact.add_dir(output)
            self.run.log_artifact(artifact)
        self.run.finish(exit_code=0)

    def failed(self, reason: str) -> None:
        try:
            self.run.summary["refinery/failure"] = reason
            self.run.finish(exit_code=1)
        except Exception as exc:  # noqa: BLE001 - the stage's own failure is what must be reported
            log.warning("wandb: could not finish run %s: %s", self.run.id, type(exc).__name__)
