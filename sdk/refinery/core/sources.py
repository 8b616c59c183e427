"""The pipeline's initializer: fetch every remote source once and check every input, before any
stage trains. Pure decisions, shared by the operator (one Job per pipeline) and local mode (one
process): what the initializer is told (`build_fetch_run`), what each stage then reads
(`stage_source_paths`), and the pipeline's status when it fails (`source_failure_status`).

A failed initializer fails the pipeline at once with the reason it reported (`SourceError` for
a source that cannot be fetched or a path that does not exist, `BadData`/`BadModel` for an
input without what its stage reads), so nothing trains on a pipeline whose last stage would
fail on its inputs. A transient failure (5xx, timeout) is retried as an infrastructure failure.

When it runs on a cluster: for every pipeline with an input to check (in practice every
pipeline: a pretrain stage reads data), before the first stage Job of each generation of the
spec, local paths on the volume included — a pipeline without a remote source gets the
initializer Job too, since a misspelt path is as fatal as a missing bucket. It is run lazily:
only when plan() would start a stage (`Plan.waiting_for_inputs`), so a pipeline that has nothing
left to run (it succeeded, or failed for another reason) is not checked again after an operator
upgrade or a spec change.

How the operator remembers that the check passed: the `InputsChecked` condition, `True` with the
`observedGeneration` it was checked for. Retries, re-runs, later stages and a restarted operator
read it and launch nothing; a new generation (a changed spec may name new paths) is checked
again before its first stage Job, by a Job of its own (the next attempt number, annotated with
the generation, so the Jobs of an earlier generation's check never count as this one's). Until
the status records it, the Jobs themselves are the record (level-based, like plan()).
A condition rather than a new status field: it needs no schema change, carries its generation
the Kubernetes way, and `kubectl wait --for=condition=InputsChecked` works. `status.sources`
still records what was fetched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from ..api.run import ConfigMapReporter, FetchResult, FetchRun, FileReporter
from ..api.sources import SourceStatus, fetched_path, stage_sources
from ..api.v1alpha1 import Phase, PipelineStatus, Stage, TrainingPipeline
from . import conditions as cond
from .conditions import rfc3339
from .naming import dns_name
from .plan import REASON_START_TIMEOUT, AttemptState, Stop, start_time_left

REASON_SOURCE_ERROR = "SourceError"
INITIALIZER_RETRIES = 3  # transient failures of the initializer retried (it also retries inside)
INPUTS_CHECKED = "InputsChecked"  # condition: every input exists and has what its stage reads
REASON_INPUTS_CHECKED = "InputsChecked"
REASON_CHECKING_INPUTS = "CheckingInputs"  # the initializer Job is fetching and checking
ANNOTATION_GENERATION = "refinery.dev/generation"  # on the initializer Job: the spec generation it checks


def initializer_job_name(pipeline: str, attempt: int) -> str:
    return dns_name(pipeline, "sources", attempt, "fetch")  # stage Jobs end in their attempt number: never the same


def initializer_config_name(pipeline: str, attempt: int) -> str:
    return dns_name(pipeline, "sources", attempt, "fetch-config")


def initializer_record_name(pipeline: str) -> str:
    """The ConfigMap the initializer writes its FetchResult to (stage records end in `-progress`)."""
    return dns_name(pipeline, "init-sources")


def needs_initializer(pipeline: TrainingPipeline) -> bool:
    """Whether any stage names an input to check: a remote source or a path on the volume (inputs
    that another stage produces, `from` and `rewardModel`, are not sources)."""
    return any(stage_sources(stage) for stage in pipeline.spec.stages)


def inputs_checked(previous: PipelineStatus | None, generation: int | None) -> bool:
    """The check passed for this generation of the spec (the `InputsChecked` condition)."""
    checked = cond.get_condition(previous.conditions, INPUTS_CHECKED) if previous else None
    return checked is not None and checked.status == "True" and checked.observed_generation == generation


def build_fetch_run(pipeline: TrainingPipeline, pipeline_root: str, data_root: str,
                    reporter: FileReporter | ConfigMapReporter | None = None) -> FetchRun:
    return FetchRun(pipeline=pipeline.metadata.name, namespace=pipeline.metadata.namespace,
                    pipeline_root=pipeline_root, data_root=data_root, stages=pipeline.spec.stages, reporter=reporter)


@dataclass(frozen=True)
class InitializerDecision:
    ready: bool  # the stages may start
    launch: int | None = None  # create this attempt of the initializer Job (when a stage waits on it)
    failure: FetchResult | None = None  # failed for good: the pipeline fails with it
    sources: tuple[SourceStatus, ...] = ()
    checked_by: str | None = None  # what passed the check just now ("Job <name>"; the condition is not yet set)
    checking: str | None = None  # the Job checking now


def initializer_start_timeout(pipeline: TrainingPipeline) -> int:
    """Seconds the initializer's pod may take to become ready: the shortest `startTimeoutSeconds`
    of the stages, since it runs from the same image, on the same volume, before any of them."""
    return min(stage.retries.start_timeout_seconds for stage in pipeline.spec.stages)


def initializer_start_failure(pipeline: TrainingPipeline, latest: AttemptState, now: datetime | None) -> FetchResult | None:
    """A StartTimeout when the initializer's pod never started (an image the node cannot pull or
    has not got, a volume that cannot attach): without it the pipeline would wait forever."""
    timeout = initializer_start_timeout(pipeline)
    left = None if now is None else start_time_left(latest, timeout, now)
    if left is None or left > 0:
        return None
    return FetchResult(phase="Failed", reason=REASON_START_TIMEOUT, message=(
        f"no pod of the initializer Job {initializer_job_name(pipeline.metadata.name, latest.attempt)} was ready "
        f"{timeout}s after it started: look for ErrImageNeverPull or ImagePullBackOff (spec.image) or a volume that "
        "cannot attach in `kubectl describe pod`"))


def decide_initializer(pipeline: TrainingPipeline, attempts: Sequence[AttemptState], record: FetchResult | None,
                       previous: PipelineStatus | None, taken: int = 0, now: datetime | None = None) -> InitializerDecision:
    """Level-based, like plan(): from the initializer Jobs of this generation (`attempts`), the
    highest attempt number any initializer Job of the pipeline has (`taken`: an earlier
    generation's), the result it reported and the status last written; `now` for its start
    deadline (`initializer_start_failure`)."""
    recorded = tuple(previous.sources or ()) if previous else ()
    name = pipeline.metadata.name
    if not needs_initializer(pipeline) or inputs_checked(previous, pipeline.metadata.generation):
        return InitializerDecision(ready=True, sources=recorded)
    latest = max(attempts, key=lambda a: a.attempt, default=None)
    after = max([taken, *(a.attempt for a in attempts)])
    if latest is None:
        return InitializerDecision(ready=False, launch=after + 1, sources=recorded)
    job = initializer_job_name(name, latest.attempt)
    if latest.phase in ("Pending", "Running"):
        if (never_started := initializer_start_failure(pipeline, latest, now)) is not None:
            return InitializerDecision(ready=False, failure=never_started)
        return InitializerDecision(ready=False, sources=recorded, checking=job)
    reported = record if record is not None and record.phase == latest.phase else None
    if latest.phase == "Succeeded":
        return InitializerDecision(ready=True, sources=tuple(reported.sources) if reported else recorded,
                                   checked_by=f"Job {job}")
    transient = latest.infrastructure or latest.disruption or (reported is not None and reported.transient)
    if transient and len(attempts) <= INITIALIZER_RETRIES:
        return InitializerDecision(ready=False, launch=after + 1 if latest.pods_gone else None, sources=recorded,
                                   checking=job)
    return InitializerDecision(ready=False, failure=reported or FetchResult(
        phase="Failed", reason=REASON_SOURCE_ERROR, message=latest.message or "the source fetch failed"))


def initializer_launch(decision: InitializerDecision, waiting_for_inputs: Sequence[str]) -> int | None:
    """The initializer attempt to create now: only when a stage would start but for the check."""
    return decision.launch if waiting_for_inputs else None


def record_inputs_check(status: PipelineStatus, pipeline: TrainingPipeline, decision: InitializerDecision,
                        launch: int | None, now: datetime) -> None:
    """`status.sources` and the `InputsChecked` condition, from the decision (in place)."""
    status.sources = list(decision.sources) or None
    generation, stamp = pipeline.metadata.generation, rfc3339(now)
    if decision.checked_by is not None:
        cond.set_condition(status.conditions, INPUTS_CHECKED, True, REASON_INPUTS_CHECKED,
                           f"every stage's inputs exist and have what the stage reads ({decision.checked_by})",
                           stamp, generation)
    elif checking := decision.checking or (initializer_job_name(pipeline.metadata.name, launch) if launch else None):
        cond.set_condition(status.conditions, INPUTS_CHECKED, False, REASON_CHECKING_INPUTS,
                           f"Job {checking} is checking every stage's inputs before a stage starts", stamp, generation)


def stage_source_paths(stage: Stage, pipeline_root: str) -> dict[str, str]:
    """Remote source URI → the fetched copy the stage reads instead."""
    return {s.ref.uri: fetched_path(pipeline_root, s.ref) for s in stage_sources(stage) if s.ref.remote}


def source_failure_status(previous: PipelineStatus | None, result: FetchResult, generation: int | None,
                          now: datetime) -> PipelineStatus:
    """Failed before any stage started: the initializer's reason and message on every condition.
    A stage still running (the spec changed mid-run to a bad input; its Job is ended, see
    `attempts_to_end`) is Failed with the same message."""
    stamp = rfc3339(now)
    status = (previous or PipelineStatus()).model_copy(deep=True)
    status.phase = Phase.failed
    status.observed_generation = generation
    status.current_stage = None
    status.sources = list(result.sources) or None
    reason = result.reason or REASON_SOURCE_ERROR
    message = f"inputs checked before any stage trains: {result.message}"
    for type_, value in ((INPUTS_CHECKED, False), (cond.READY, False), (cond.PROGRESSING, False), (cond.FAILED, True)):
        cond.set_condition(status.conditions, type_, value, reason, message, stamp, generation)
    for stage in status.stages:
        if stage.phase in (Phase.running, Phase.suspended):
            stage.phase, stage.message, stage.completion_time = Phase.failed, f"stopped: {message}", stamp
    return status


def attempts_to_end(attempts: Mapping[str, Sequence[AttemptState]], result: FetchResult) -> list[Stop]:
    """The attempts still running when the inputs check failed — possible when the spec changed
    mid-run and a stage of another branch was running — each ended as failed: a failed pipeline
    keeps no GPU busy."""
    reason = result.reason or REASON_SOURCE_ERROR
    stops = []
    for stage, states in sorted(attempts.items()):
        latest = max(states, key=lambda a: a.attempt, default=None)
        if latest is not None and latest.phase in ("Pending", "Running") and not latest.deleting \
                and not latest.suspended:  # a suspended Job has no pods, and its deadline does not run
            stops.append(Stop(stage=stage, attempt=latest.attempt, action="fail", reason=reason,
                              message=f"the pipeline's inputs check failed: {result.message}"))
    return stops
