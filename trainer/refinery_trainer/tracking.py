"""The experiment trackers a stage reports to (spec.tracking), through transformers' own callbacks.

MLflow's and W&B's callbacks come from the stage's trackers (mlflow_tracking.py, wandb_tracking.py),
which made their runs: `start_trackers(ctx)` before training.

    callbacks = tracking_callbacks(ctx)   # [] without spec.tracking

TensorBoard: `transformers.integrations.TensorBoardCallback`, its writer pointed at
`<stage>/tensorboard/attempt-<n>/` (it writes on rank 0 only). It gets every event the stage's
other callbacks get — the Trainer's, TRL's and the PPO loop's — so the training loss, evaluations,
rewards and throughput land there with their steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from refinery.api.tracking import TENSORBOARD_DIR

from .errors import MisconfiguredError, StageError

if TYPE_CHECKING:
    from transformers import TrainerCallback

    from .context import StageContext


class TrackingUnavailable(StageError):
    """The tracking server could not be reached or refused us: retried like any trainer failure."""

    reason = "TrackingUnavailable"


def pipeline_root(ctx: StageContext) -> Path:
    """The pipeline's folder: the stage folder's parent (`<stage>/reruns/<n>/` for a re-run)."""
    stage_dir = ctx.stage_dir
    return stage_dir.parents[2] if stage_dir.parent.name == "reruns" else stage_dir.parent


def stage_tags(ctx: StageContext) -> dict[str, str]:
    """Lineage: what the stage started from and the sources it read, as fetched."""
    stage = ctx.stage
    tags = {"refinery.pipeline": ctx.run.pipeline, "refinery.stage": stage.name, "refinery.type": str(stage.type),
            "refinery.from": stage.from_ or "", "refinery.initModel": ctx.run.init_model or "",
            "refinery.image": ctx.run.image or "local"}
    for i, source in enumerate(ctx.lineage()):
        tags[f"refinery.source.{i}"] = f"{source.get('uri')} -> {source.get('resolved')}"
    return tags


def start_trackers(ctx: StageContext) -> list:
    """The runs of spec.tracking's servers, made (or resumed) before training; rank 0 only."""
    from .mlflow_tracking import StageTracker
    from .wandb_tracking import WandbTracker

    trackers = [StageTracker.start(ctx)]
    try:
        trackers.append(WandbTracker.start(ctx))
    except Exception:
        for tracker in trackers:  # the MLflow run made above does not stay RUNNING
            if tracker is not None:
                tracker.failed("TrackingUnavailable")
        raise
    return [t for t in trackers if t is not None]


def tracking_callbacks(ctx: StageContext) -> list[TrainerCallback]:
    tracking = ctx.run.tracking
    callbacks = [tracker.callback() for tracker in ctx.trackers]
    if tracking is None or tracking.tensorboard is None:
        return callbacks
    from transformers.integrations import TensorBoardCallback

    try:
        callback = TensorBoardCallback()
    except RuntimeError as exc:  # neither tensorboard nor tensorboardX is installed
        raise MisconfiguredError(
            "spec.tracking.tensorboard needs the tensorboard package in the trainer image "
            "(pip install 'refinery[tracking]'; the project's images have it)") from exc
    callback.logging_dir = str(ctx.stage_dir / TENSORBOARD_DIR / f"attempt-{ctx.run.attempt}")
    return [callback, *callbacks]
