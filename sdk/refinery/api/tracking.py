"""Where a pipeline's training is also recorded for people to browse (refinery.dev/v1alpha1).

    tracking:
      tensorboard: {}     # event files next to the checkpoints: tensorboard --logdir <pipeline folder>
      mlflow:
        trackingUri: http://mlflow.mlflow:5000
        experiment: chat-models     # default: the pipeline's name
        logModel: true              # the final model of each stage as the run's artifact
      wandb:
        project: chat-models
        entity: my-team             # default: the API key's default entity
        mode: offline               # runs kept on the volume for `wandb sync`; default online

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

Weights & Biases has no nested runs; its own way to group them is used instead: one run per stage
run, grouped by the pipeline (`group`), typed by the stage's type (`job_type`), named after the
stage. A retried attempt resumes the same run (its id is kept in `<stage>/wandb-run.json`), so its
charts continue. Into it go transformers' `WandbCallback` logs (every training log and evaluation,
the TrainingArguments and the model config), the stage's spec and lineage under `refinery` in the
run's config, the final metrics in its summary and, with `logModel`, the final model as an artifact
of type `model`. The W&B files live in `<stage>/wandb/` on the volume: with `mode: offline` (an
air-gapped cluster) `wandb sync <stage>/wandb/offline-run-*` uploads them later. The API key comes
from the environment (`WANDB_API_KEY` through a Secret reference; `WANDB_BASE_URL` for a
self-hosted server).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .base import ApiModel
from .credentials import uri_credential_problem

TENSORBOARD_DIR = "tensorboard"  # in each stage's folder: attempt-<n>/ event files
WANDB_DIR = "wandb"  # in each stage's folder: W&B's run files (offline runs to sync)


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


class WandbSpec(ApiModel):
    project: str = Field(..., min_length=1, max_length=128, pattern=r"^[^/\\#?%:]+$",
                         description="The W&B project the stage runs go to.")
    entity: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[^/\\#?%:]+$",
                               description="The team or user owning the project. Default: the API key's default entity.")
    mode: Literal["online", "offline"] = Field(
        "online", description="`offline`: write the runs to <stage>/wandb/ on the volume only, for `wandb sync` later.")
    log_model: bool = Field(
        False, description="Log each stage's final model folder as an artifact of type `model`. Off by default: a model "
        "can be many GB.")


class TrackingSpec(ApiModel):
    tensorboard: TensorBoardSpec | None = Field(
        None, description="Write TensorBoard event files to <stage>/tensorboard/attempt-<n>/ on the volume.")
    mlflow: MlflowSpec | None = Field(
        None, description="Log every stage to an MLflow tracking server: a parent run per pipeline, a nested run per stage.")
    wandb: WandbSpec | None = Field(
        None, description="Log every stage to Weights & Biases: a run per stage, grouped by the pipeline.")
