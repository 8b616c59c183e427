"""The contract between the planner (operator or local runner) and one stage process.

`StageRun` is what `refinery-train run --config FILE` reads: the stage's spec plus everything
the planner resolved (paths, attempt, where to report). `ProgressRecord` is what the trainer
writes back — to a file in local mode, to the stage's ConfigMap in a cluster — and the
planner folds into `status.stages[]`. Neither side guesses a path: the planner decides them all.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .sources import SourceStatus
from .tracking import TrackingSpec
from .v1alpha1 import ApiModel, Checkpoint, Stage

RESULT_FILE = "result.json"
MODEL_DIR = "model"
PROGRESS_FILE = "progress.json"
METRICS_PORT_ENV = "REFINERY_METRICS_PORT"  # the /metrics port of the operator, local mode and trainer pods
METRICS_LOG_FILE = "metrics.jsonl"  # every training/eval log of an attempt, one JSON line each, in its folder
CHECKPOINT_MARKER = "refinery-checkpoint-complete.json"
# Local mode's run folder (<workdir>/<pipeline>/): what `refinery run` writes and `Client.local` reads.
LOCAL_STATUS_FILE = "status.json"  # the status, as the operator would write it to .status
LOCAL_PIPELINE_FILE = "pipeline.json"  # the manifest the run follows and its data root
LOCAL_EVENTS_FILE = "events.jsonl"  # the Events a cluster would show, one JSON line each
LOCAL_LOGS_DIR = ".runs"  # each attempt's config and log: <stage>-<attempt>.json / .log


class FileReporter(ApiModel):
    kind: Literal["file"] = "file"
    path: str = Field(..., description="JSON file the progress record is (atomically) rewritten to.")


class ConfigMapReporter(ApiModel):
    kind: Literal["configmap"] = "configmap"
    namespace: str
    name: str = Field(..., description="ConfigMap the stage's ServiceAccount may get/patch; key `progress.json`.")


class StageRun(ApiModel):
    """One attempt of one stage, fully resolved."""

    pipeline: str = Field(..., description="Pipeline name (for logs and metrics labels).")
    namespace: str | None = Field(None, description="Pipeline namespace (cluster mode).")
    stage: Stage = Field(..., description="The stage's spec, exactly as in the pipeline.")
    attempt: int = Field(1, ge=1, description="1-based attempt; checkpoints go to attempt-<n>/checkpoints.")
    stage_dir: str = Field(..., description="Absolute folder of this stage on the volume.")
    data_root: str = Field(..., description="Absolute folder that relative data paths are resolved against.")
    init_model: str | None = Field(None, description="Absolute path of the model named by `from` (its model/ folder).")
    reward_model: str | None = Field(None, description="Absolute path of the reward model (rlhf).")
    models: dict[str, str] | None = Field(
        None, description="eval: absolute paths of the models to score, by stage; rlhf: of the reward stages named in "
        "rl.rewards and rl.audit (rewardModel's is reward_model); export: every stage's model."
    )
    volume_root: str | None = Field(
        None, description="export: the volume's root (/workspace; local mode: the work folder) that a relative "
        "`spec.export.to` resolves against.",
    )
    pipeline_spec: dict | None = Field(None, description="export: the pipeline's spec, for the model card's lineage.")
    circular: dict[str, str] | None = Field(
        None, description="eval: scores judged by a reward model the scored model was optimised against "
        "(`<model>.<score>` -> why; the pipeline's CircularJudge condition), marked in eval.json.",
    )
    reporter: FileReporter | ConfigMapReporter | None = Field(None, description="Where progress is reported.")
    sources: dict[str, str] = Field(
        default_factory=dict, description="Remote source URI -> its fetched copy on the volume (a file or a folder)."
    )
    progress_interval_s: float = Field(2.0, gt=0, description="Least seconds between two periodic progress reports.")
    tracking: TrackingSpec | None = Field(None, description="The pipeline's spec.tracking.")
    image: str | None = Field(None, description="The image the stage runs in (cluster mode), for the trackers' lineage.")


class ProgressRecord(ApiModel):
    """What a stage process reports; only that process writes it, only the planner reads it."""

    phase: Literal["Running", "Succeeded", "Failed"] = "Running"
    attempt: int = 1
    step: int = 0
    max_steps: int | None = None
    progress: float = Field(0.0, ge=0, le=1)
    last_checkpoint: Checkpoint | None = None
    checkpoints: int = Field(0, description="Complete checkpoints of the stage on the volume.")
    metrics: dict[str, float] = Field(default_factory=dict)
    output: str | None = Field(None, description="Final model folder, once written.")
    resumed_from: Checkpoint | None = Field(None, description="Checkpoint this attempt resumed from.")
    message: str | None = Field(None, description="Why the stage failed, when it did.")
    failure_reason: str | None = Field(None, description="CamelCase reason when failed, e.g. `BadData`, `NanLoss`.")
    estimated_remaining_seconds: float | None = Field(
        None, description="Seconds the attempt has left at its pace since its first step (trainer/refinery_trainer/eta.py).")
    seconds_per_step: float | None = Field(None, description="Wall seconds per optimiser step at that pace.")
    update_time: str | None = None


FETCH_RESULT_FILE = "sources.json"  # in <pipeline>/sources/: what `refinery-train fetch` found or fetched


class FetchRun(ApiModel):
    """What `refinery-train fetch --config FILE` reads: fetch every remote source of the pipeline
    once, then check every stage's inputs (fetched or on the volume) before any stage trains."""

    pipeline: str = Field(..., description="Pipeline name (for logs).")
    namespace: str | None = Field(None, description="Pipeline namespace (cluster mode).")
    pipeline_root: str = Field(..., description="Absolute folder of the pipeline; sources go to its sources/ folder.")
    data_root: str = Field(..., description="Absolute folder that relative paths are resolved against.")
    stages: list[Stage] = Field(..., description="The pipeline's stages, whose sources are fetched and checked.")
    reporter: FileReporter | ConfigMapReporter | None = Field(
        None, description="Where the FetchResult is also written (a cluster: the pipeline's sources ConfigMap)."
    )


class FetchResult(ApiModel):
    """What the fetch wrote to `sources/sources.json` (and the termination message)."""

    phase: Literal["Succeeded", "Failed"]
    sources: list[SourceStatus] = Field(default_factory=list)
    reason: str | None = Field(None, description="CamelCase reason when failed: `SourceError`, `BadData`, `BadModel`.")
    message: str | None = Field(None, description="Why it failed, naming the source (never a credential).")
    transient: bool = Field(False, description="A failure worth retrying (5xx, timeout): an infrastructure failure.")
