"""The experiment trackers a stage reports to (spec.tracking), through transformers' own callbacks.

MLflow's callback comes from the stage's StageTracker (mlflow_tracking.py), which made its run.

    callbacks = tracking_callbacks(ctx)   # [] without spec.tracking

TensorBoard: `transformers.integrations.TensorBoardCallback`, its writer pointed at
`<stage>/tensorboard/attempt-<n>/` (it writes on rank 0 only). It gets every event the stage's
other callbacks get — the Trainer's, TRL's and the PPO loop's — so the training loss, evaluations,
rewards and throughput land there with their steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from refinery.api.tracking import TENSORBOARD_DIR

from .errors import MisconfiguredError

if TYPE_CHECKING:
    from transformers import TrainerCallback

    from .context import StageContext


def tracking_callbacks(ctx: StageContext) -> list[TrainerCallback]:
    tracking = ctx.run.tracking
    mlflow = [ctx.tracker.callback()] if ctx.tracker is not None else []
    if tracking is None or tracking.tensorboard is None:
        return mlflow
    from transformers.integrations import TensorBoardCallback

    try:
        callback = TensorBoardCallback()
    except RuntimeError as exc:  # neither tensorboard nor tensorboardX is installed
        raise MisconfiguredError(
            "spec.tracking.tensorboard needs the tensorboard package in the trainer image "
            "(pip install 'refinery[tracking]'; the project's images have it)") from exc
    callback.logging_dir = str(ctx.stage_dir / TENSORBOARD_DIR / f"attempt-{ctx.run.attempt}")
    return [callback, *mlflow]
