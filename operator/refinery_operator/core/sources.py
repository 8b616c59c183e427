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

from datetime import datetime

from ..api.run import FetchResult, FetchRun
from ..api.sources import fetched_path, stage_sources
from ..api.v1alpha1 import Phase, PipelineStatus, Stage, TrainingPipeline
from . import conditions as cond
from .conditions import rfc3339
from .naming import dns_name

REASON_SOURCE_ERROR = "SourceError"
INITIALIZER_RETRIES = 3  # transient failures of the initializer retried (it also retries inside)


def initializer_job_name(pipeline: str, attempt: int) -> str:
    return dns_name(pipeline, "sources", attempt, "fetch")  # stage Jobs end in their attempt number: never the same


def build_fetch_run(pipeline: TrainingPipeline, pipeline_root: str, data_root: str) -> FetchRun:
    return FetchRun(pipeline=pipeline.metadata.name, namespace=pipeline.metadata.namespace,
                    pipeline_root=pipeline_root, data_root=data_root, stages=pipeline.spec.stages)


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
    status.sources = list(result.sources)
    reason = result.reason or REASON_SOURCE_ERROR
    message = f"inputs checked before any stage trains: {result.message}"
    for type_, value in ((cond.READY, False), (cond.PROGRESSING, False), (cond.FAILED, True)):
        cond.set_condition(status.conditions, type_, value, reason, message, stamp, generation)
    return status
