"""The `TrainingPipeline`'s `.status` (refinery.dev/v1alpha1): written by the operator alone (and by
local mode into status.json), read by `kubectl get tp`, dashboards and the next reconcile.
Re-exported from `v1alpha1`, where the resource's names live."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field

from .base import ApiModel
from .sources import SourceStatus


class Phase(StrEnum):
    pending = "Pending"
    running = "Running"
    succeeded = "Succeeded"
    failed = "Failed"
    suspended = "Suspended"


class Checkpoint(ApiModel):
    step: int = Field(..., description="Optimiser step of the checkpoint.")
    path: str = Field(..., description="Folder of the checkpoint on the volume.")
    time: str | None = Field(None, description="When the checkpoint was completed (RFC 3339).")


class Failure(ApiModel):
    class_: Literal["Application", "Infrastructure", "Disruption"] = Field(
        ..., alias="class", description="Who ended the attempt: the trainer (Application), the platform failing it "
        "(Infrastructure), or something outside the trainer stopping it (Disruption: deleted, evicted, node lost).")
    reason: str = Field(..., description="CamelCase reason, e.g. `TrainerError`, `Evicted`.")
    message: str = Field(..., description="What happened, in words a user can act on.")
    attempt: int | None = Field(None, description="The attempt that failed.")
    node: str | None = Field(None, description="The node that was lost or disrupted the attempt's pod, when known.")


class StageInputs(ApiModel):
    model: str | None = Field(None, description="Resolved path of the initial model (from `from`).")
    reward_model: str | None = Field(None, description="Resolved path of the reward model (rlhf; an eval stage's judge).")
    models: dict[str, str] | None = Field(
        None, description="eval: the models it scores, by stage name; rlhf: its reward and audit stages' models; "
        "export: every stage's model (its lineage)."
    )


class RestartCounts(ApiModel):
    application: int = Field(0, description="Retries after the trainer failed (exit code, NanLoss, BadData).")
    infrastructure: int = Field(0, description="Retries after the platform failed the pod (OOM-killed, StartTimeout).")
    disruption: int = Field(0, description="Retries after a disruption (pod deleted, evicted, preempted, node lost).")


class TokenizeStatus(ApiModel):
    """A pretrain stage's tokenize step (`data.tokenize`): the Indexed Job before the stage."""

    phase: Phase = Field(Phase.pending, description="Running while a step Job runs; Succeeded once every shard is tokenized.")
    workers: int = Field(..., description="Workers of each attempt (the Job's parallelism and completions).")
    attempt: int = Field(0, description="Current attempt of the step (1-based); a retry skips the shards already complete.")
    job_name: str | None = Field(None, description="The current attempt's Job.")
    completed_workers: int = Field(0, description="Workers of the current attempt that finished their slice.")
    retries: int = Field(0, description="Attempts of the step retried after a failure.")
    last_failure: Failure | None = Field(None, description="Why the newest failed attempt of the step failed.")


class StageStatus(ApiModel):
    name: str
    phase: Phase = Phase.pending
    attempt: int = Field(0, description="Current attempt number (1-based; 0 before the first).")
    job_name: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    progress: float = Field(0.0, description="0–1 share of the stage's steps done.")
    step: int | None = Field(None, description="Optimiser steps done.")
    max_steps: int | None = Field(None, description="Optimiser steps planned.")
    estimated_remaining_seconds: float | None = Field(
        None, description="Seconds the running attempt has left at its pace since its first step; 0 once succeeded.")
    seconds_per_step: float | None = Field(
        None, description="Wall seconds per optimiser step measured by the latest attempt (evaluations and saves included).")
    last_checkpoint: Checkpoint | None = None
    resumed_from: Checkpoint | None = Field(None, description="The checkpoint the current attempt resumed from.")
    checkpoints: int = Field(0, description="Complete checkpoints written by the stage.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Latest metrics (evalLoss, evalAccuracy, meanReward …).")
    inputs: StageInputs | None = Field(None, description="The models this stage starts from, as resolved by the operator.")
    output: str | None = Field(None, description="The stage's final model folder.")
    restarts: int = Field(0, description="Attempts retried after a failure.")
    restarts_by_class: RestartCounts = Field(default_factory=RestartCounts, description="`restarts` by failure class.")
    last_failure: Failure | None = None
    disruptions_in_a_row: int = Field(
        0, description="Disruptions since the stage last wrote a newer checkpoint (limit: `retries.disruption`).")
    disruption_checkpoint_step: int | None = Field(
        None, description="The newest checkpoint step when the latest disruption was counted (-1: none yet).")
    next_attempt_time: str | None = Field(None, description="When the next attempt starts, after the retry back-off.")
    gpu_seconds: float = Field(0.0, description="GPU-seconds held by the stage's pods, over all attempts.")
    lost_gpu_seconds: float = Field(
        0.0, description="GPU-seconds of work thrown away by failures: from the newest checkpoint to each failure."
    )
    run: int = Field(0, description="Times the stage was re-run (annotation or changed spec); 0 for the first run.")
    first_attempt: int = Field(1, description="The current run's first attempt; older attempts belong to earlier runs.")
    spec_hash: str | None = Field(None, description="Hash of the stage spec (and inputs) the current run trains with.")
    tokenize: TokenizeStatus | None = Field(None, description="pretrain with `data.tokenize`: its corpus' tokenize step.")
    message: str | None = None


class Condition(ApiModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class PipelineStatus(ApiModel):
    phase: Phase = Phase.pending
    observed_generation: int | None = None
    current_stage: str | None = Field(None, description="The running stage (the first, when several run).")
    progress: str | None = Field(None, description="Stages done out of all, e.g. `2/4`.")
    checkpoint_step: int | None = Field(None, description="Last checkpoint step of the current stage.")
    checkpoint_time: str | None = Field(None, description="When the current stage last checkpointed.")
    estimated_remaining_seconds: int | None = Field(
        None, description="Seconds until the pipeline ends: the longest chain of remaining stages, each from its "
        "measured pace or one borrowed from the stages that ran (README: Status). Unset until a stage measured one.")
    eta: str | None = Field(None, description="`estimatedRemainingSeconds` in words (e.g. `12m`), for `kubectl get`.")
    conditions: list[Condition] = Field(default_factory=list)
    stages: list[StageStatus] = Field(default_factory=list)
    rerun_request: str | None = Field(
        None, description="The last `refinery.dev/rerun-from` annotation value acted on (a new value triggers a re-run)."
    )
    sources: list[SourceStatus] | None = Field(
        None, max_length=128,
        description="The remote sources (hf://, s3://, https://) fetched for the stages, with what each resolved to.",
    )

    def stage(self, name: str) -> StageStatus | None:
        return next((s for s in self.stages if s.name == name), None)
