"""The pipeline's initializer: fetch every remote source once and check every input, before any
stage trains. Pure decisions, shared by the operator (one Job per pipeline) and local mode (one
process): what the initializer is told (`build_fetch_run`), what each stage then reads
(`stage_source_paths`), and the pipeline's status when it fails (`source_failure_status`).

A failed initializer fails the pipeline at once with the reason it reported (`SourceError` for
a source that cannot be fetched or a path that does not exist, `BadData`/`BadModel` for an
input without what its stage reads), so nothing trains on a pipeline whose last stage would
fail on its inputs. A transient failure (5xx, timeout) is retried as an infrastructure failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ..api.run import ConfigMapReporter, FetchResult, FetchRun, FileReporter
from ..api.sources import SourceStatus, fetched_path, remote_sources, stage_sources
from ..api.v1alpha1 import Phase, PipelineStatus, Stage, TrainingPipeline
from . import conditions as cond
from .conditions import rfc3339
from .naming import dns_name
from .plan import AttemptState

REASON_SOURCE_ERROR = "SourceError"
INITIALIZER_RETRIES = 3  # transient failures of the initializer retried (it also retries inside)


def initializer_job_name(pipeline: str, attempt: int) -> str:
    return dns_name(pipeline, "sources", attempt, "fetch")  # stage Jobs end in their attempt number: never the same


def initializer_config_name(pipeline: str, attempt: int) -> str:
    return dns_name(pipeline, "sources", attempt, "fetch-config")


def initializer_record_name(pipeline: str) -> str:
    """The ConfigMap the initializer writes its FetchResult to (stage records end in `-progress`)."""
    return dns_name(pipeline, "init-sources")


def needs_initializer(pipeline: TrainingPipeline) -> bool:
    """A cluster pipeline runs the initializer Job when a stage names a remote source. (Local mode
    always runs it: there it also checks pipelines whose inputs are all on the volume.)"""
    return bool(remote_sources(pipeline.spec.stages))


def build_fetch_run(pipeline: TrainingPipeline, pipeline_root: str, data_root: str,
                    reporter: FileReporter | ConfigMapReporter | None = None) -> FetchRun:
    return FetchRun(pipeline=pipeline.metadata.name, namespace=pipeline.metadata.namespace,
                    pipeline_root=pipeline_root, data_root=data_root, stages=pipeline.spec.stages, reporter=reporter)


@dataclass(frozen=True)
class InitializerDecision:
    ready: bool  # the stages may start
    launch: int | None = None  # create this attempt of the initializer Job
    failure: FetchResult | None = None  # failed for good: the pipeline fails with it
    sources: tuple[SourceStatus, ...] = ()


def decide_initializer(pipeline: TrainingPipeline, attempts: Sequence[AttemptState], record: FetchResult | None,
                       previous: PipelineStatus | None) -> InitializerDecision:
    """Level-based, like plan(): from the initializer Jobs seen and the result it reported."""
    wanted = {ref.uri for ref in remote_sources(pipeline.spec.stages)}
    recorded = tuple(previous.sources or ()) if previous else ()
    if not wanted or (recorded and wanted <= {s.uri for s in recorded}):
        return InitializerDecision(ready=True, sources=recorded)  # fetched before: the folders are complete
    latest = max(attempts, key=lambda a: a.attempt, default=None)
    if latest is None:
        return InitializerDecision(ready=False, launch=1)
    if latest.phase in ("Pending", "Running"):
        return InitializerDecision(ready=False)
    reported = record if record is not None and record.phase == latest.phase else None
    if latest.phase == "Succeeded":
        return InitializerDecision(ready=True, sources=tuple(reported.sources) if reported else recorded)
    transient = latest.infrastructure or (reported is not None and reported.transient)
    if transient and latest.attempt <= INITIALIZER_RETRIES:
        return InitializerDecision(ready=False, launch=latest.attempt + 1 if latest.pods_gone else None)
    return InitializerDecision(ready=False, failure=reported or FetchResult(
        phase="Failed", reason=REASON_SOURCE_ERROR, message=latest.message or "the source fetch failed"))


def stage_source_paths(stage: Stage, pipeline_root: str) -> dict[str, str]:
    """Remote source URI → the fetched copy the stage reads instead."""
    return {s.ref.uri: fetched_path(pipeline_root, s.ref) for s in stage_sources(stage) if s.ref.remote}


def source_failure_status(previous: PipelineStatus | None, result: FetchResult, generation: int | None,
                          now: datetime) -> PipelineStatus:
    """Failed before any stage started: the initializer's reason and message on every condition."""
    stamp = rfc3339(now)
    status = (previous or PipelineStatus()).model_copy(deep=True)
    status.phase = Phase.failed
    status.observed_generation = generation
    status.current_stage = None
    status.sources = list(result.sources) or None
    reason = result.reason or REASON_SOURCE_ERROR
    message = f"inputs checked before any stage trains: {result.message}"
    for type_, value in ((cond.READY, False), (cond.PROGRESSING, False), (cond.FAILED, True)):
        cond.set_condition(status.conditions, type_, value, reason, message, stamp, generation)
    return status
