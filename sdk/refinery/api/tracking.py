"""Where a pipeline's training is also recorded for people to browse (refinery.dev/v1alpha1).

    tracking:
      tensorboard: {}     # event files next to the checkpoints: tensorboard --logdir <pipeline folder>
      mlflow:
        trackingUri: http://mlflow.mlflow:5000
        experiment: chat-models     # default: the pipeline's name
        logModel: true              # the final model of each stage as the run's artifact

TensorBoard needs no server: each stage attempt's rank 0 writes transformers' own
`TensorBoardCallback` events (every training log, each evaluation, the TrainingArguments and the
model config as text) to `<stage>/tensorboard/attempt-<n>/` on the volume, so a retried attempt is
its own run beside the one it resumed. Point `tensorboard --logdir` at the pipeline's folder (a
pod mounting the claim, or local mode's `runs/<pipeline>`) to see every stage and attempt.

MLflow: one parent run per pipeline (its folder on the volume keeps the run's id, so every stage,
attempt and re-run of the pipeline finds it) and one nested run per stage run, which a retried
attempt continues. Into the stage's run go transformers' `MLflowCallback` logs (every training log
and evaluation with its step, the TrainingArguments and the model config as parameters), then the
stage's spec as `refinery.*` parameters, its final metrics (an eval stage's scores too, also on the
parent as `<stage>.<metric>`), lineage tags and, with `logModel`, the final model as an artifact.
Credentials reach the trainer as MLflow reads them, from the environment (`MLFLOW_TRACKING_TOKEN`,
`MLFLOW_TRACKING_USERNAME`/`PASSWORD` through `env`/`envFrom` Secret references), never the spec.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from .base import ApiModel
from .credentials import uri_credential_problem

TENSORBOARD_DIR = "tensorboard"  # in each stage's folder: attempt-<n>/ event files


class TensorBoardSpec(ApiModel):
    """TensorBoard event files on the volume (no settings yet: the presence of the field turns it on)."""


class MlflowSpec(ApiModel):
    tracking_uri: str = Field(
        ..., min_length=1, max_length=1024, pattern=r"^(https?://|file:|databricks)",
        description="The MLflow tracking server (http(s)://host:port), `databricks`, or a file: store on the volume.")
    experiment: str | None = Field(
        None, min_length=1, max_length=500, description="Experiment name (created when missing). Default: the pipeline's name.")
    log_model: bool = Field(
        False, description="Upload each stage's final model folder as an artifact of its run (`model/`). Off by default: "
        "a model can be many GB.")


class TrackingSpec(ApiModel):
    tensorboard: TensorBoardSpec | None = Field(
        None, description="Write TensorBoard event files to <stage>/tensorboard/attempt-<n>/ on the volume.")
    mlflow: MlflowSpec | None = Field(
        None, description="Log every stage to an MLflow tracking server: a parent run per pipeline, a nested run per stage.")
