"""Where a pipeline's training is also recorded for people to browse (refinery.dev/v1alpha1).

    tracking:
      tensorboard: {}     # event files next to the checkpoints: tensorboard --logdir <pipeline folder>

TensorBoard needs no server: each stage attempt's rank 0 writes transformers' own
`TensorBoardCallback` events (every training log, each evaluation, the TrainingArguments and the
model config as text) to `<stage>/tensorboard/attempt-<n>/` on the volume, so a retried attempt is
its own run beside the one it resumed. Point `tensorboard --logdir` at the pipeline's folder (a
pod mounting the claim, or local mode's `runs/<pipeline>`) to see every stage and attempt.
"""

from __future__ import annotations

from pydantic import Field

from .base import ApiModel

TENSORBOARD_DIR = "tensorboard"  # in each stage's folder: attempt-<n>/ event files


class TensorBoardSpec(ApiModel):
    """TensorBoard event files on the volume (no settings yet: the presence of the field turns it on)."""


class TrackingSpec(ApiModel):
    tensorboard: TensorBoardSpec | None = Field(
        None, description="Write TensorBoard event files to <stage>/tensorboard/attempt-<n>/ on the volume.")
