"""The operator's one use-case: reconcile a pipeline with what runs in the cluster.

    observe (Jobs -> AttemptState, progress ConfigMaps -> ProgressRecord; read from the watch
             cache in children.py, not from the API)
      -> core.plan (the same decisions as local mode)
      -> create the planned attempts' ConfigMap + Job (create-if-absent: names are deterministic)
      -> patch .status only when it changed

No kopf here: an invalid spec comes back as `Outcome.invalid`, and the kopf glue in
`handlers.py` maps it to `kopf.PermanentError`. The observation functions are pure, so the
mapping from Job conditions to attempt states is tested without an API.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from . import builders, builders_sources, builders_tokenize, metrics
from refinery.api.load import explain
from refinery.api.run import PROGRESS_FILE, FetchResult, ProgressRecord
from refinery.api.v1alpha1 import PipelineStatus, TrainingPipeline
from .children import Children
from .cleanup import launch_cleanup_jobs
from refinery.core import naming
from . import disruptions
from refinery.core.accounting import parse_time
from refinery.core.events import pipeline_events
from refinery.core.plan import REASON_START_TIMEOUT, AttemptState, Launch, Observed, Stop, plan
from refinery.core.sources import (
    ANNOTATION_GENERATION, InitializerDecision, attempts_to_end, decide_initializer, initializer_launch,
    initializer_record_name, record_inputs_check, source_failure_status,
)
from refinery.core.starting import explain_start_timeout
from refinery.core.summary import invalid_spec_status
from refinery.core.tokenize import TokenizeAttempt
from refinery.core.reruns import RERUN_ANNOTATION
from .k8s import JOBS, PIPELINES, Cluster, StatusConflict

log = logging.getLogger(__name__)

# Index of the Job's podFailurePolicy rule that matched -> the platform, not the trainer, failed.
# Kubernetes reports it only in the condition's message ("... matching FailJob rule at index 0").
_RULE_INDEX = re.compile(r"rule at index (\d+)")
# Set on a Job the operator ended (plan's Stop "fail"): why, in the words lastFailure shows.
ANNOTATION_STOP_REASON = "refinery.dev/stop-reason"
ANNOTATION_STOP_MESSAGE = "refinery.dev/stop-message"
# Set on a Job the operator suspends: seconds its pods ran before (core/accounting.py).
ANNOTATION_HELD_SECONDS = "refinery.dev/held-seconds"
REASON_SUPERSEDED = "Superseded"  # a re-run replaced the attempt: not a failure
CONFLICT_RETRIES = 5  # passes from a fresh read after a refused (409) status patch, then the API error is raised


@dataclass
class Outcome:
    status: dict[str, Any]
    launched: list[str] = field(default_factory=list)  # Job names created by this call
    status_patched: bool = False
    invalid: str | None = None  # why the spec cannot run
    pipeline: TrainingPipeline | None = None  # the parsed pipeline (None when invalid)
    typed_status: PipelineStatus | None = None  # `status`, typed (for metrics)
    requeue_after: float | None = None  # reconcile again after this many seconds (a back-off ends)
    read_version: str | None = None  # the pipeline's resourceVersion this pass computed the status from
    resource_version: str | None = None  # its resourceVersion after this pass's status patch


# ----------------------------------------------------------------------------------------------
# parsing and observation (pure)


def parse_pipeline(body: Mapping[str, Any]) -> TrainingPipeline:
    """The typed pipeline; raises ValidationError. Only the identity of metadata is kept."""
    meta = body.get("metadata") or {}
    return TrainingPipeline.model_validate({
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "generation") if meta.get(k) is not None},
        "spec": body.get("spec"),
        "status": body.get("status") or None,
    })


def describe_validation_error(error: ValidationError) -> str:
    """`spec.stages[1].from: no stage named 'x'; ...` — each problem names its field."""
    return "; ".join(explain(error))


def attempt_state(job: Mapping[str, Any]) -> AttemptState:
    """What a stage Job says about its attempt, read the way `kubectl describe job` shows it.

    Whether every pod of the attempt is gone comes from the Job's counts (`active`, and
    `terminating` since Kubernetes 1.29, absent before: read as 0); since 1.31 `Failed` itself
    waits for the pods. Which pod ended it is read from the pods, before it fails (disruptions.py)."""
    meta = job.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    status = job.get("status") or {}
    attempt = int(labels.get(builders.LABEL_ATTEMPT, "1"))
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    start = status.get("startTime")
    common = dict(
        start_time=start,
        pods_gone=not status.get("active") and not status.get("terminating"),
        ready=all_pods_started(job),
        # Suspended until the Job controller says it resumed: right after `spec.suspend: false` the
        # Job still shows the old segment's startTime, reset only with the JobResumed condition.
        suspended=bool((job.get("spec") or {}).get("suspend")) or "Suspended" in conditions,
        deleting=bool(meta.get("deletionTimestamp")),
        held_seconds=held_seconds(annotations.get(ANNOTATION_HELD_SECONDS)),
    )
    if "Complete" in conditions:
        return AttemptState(attempt, "Succeeded", completion_time=status.get("completionTime")
                            or conditions["Complete"].get("lastTransitionTime"), **common)
    if "Failed" in conditions:
        failed = conditions["Failed"]
        stopped = annotations.get(ANNOTATION_STOP_REASON)
        if stopped:  # ended by the operator (StartTimeout, Superseded): its words, not the Job's
            kind = "Application" if stopped == REASON_SUPERSEDED else "Infrastructure"
            reason, message = stopped, annotations.get(ANNOTATION_STOP_MESSAGE, "")
        elif disrupted := annotations.get(disruptions.ANNOTATION_DISRUPTION_REASON):
            # before the Job failed (disruptions.py): a disruption, whatever pod's failure came first
            kind, reason, message = "Disruption", disrupted, annotations.get(disruptions.ANNOTATION_DISRUPTION_MESSAGE, "")
        else:
            kind, reason = failure_class(failed.get("reason"), failed.get("message") or "")
            message = failure_message(reason, meta.get("name", ""), failed.get("message") or "")
        return AttemptState(attempt, "Failed", reason=reason, message=message, infrastructure=kind == "Infrastructure",
                            disruption=kind == "Disruption", completion_time=failed.get("lastTransitionTime"),
                            node=annotations.get(disruptions.ANNOTATION_DISRUPTION_NODE) or None,
                            superseded=stopped == REASON_SUPERSEDED, **common)
    if status.get("active") or status.get("ready"):
        return AttemptState(attempt, "Running", **common)
    return AttemptState(attempt, "Pending", **common)


def all_pods_started(job: Mapping[str, Any]) -> bool:
    """Every pod of the attempt is ready or has succeeded: with N ranks, one that never schedules
    leaves the others waiting at the rendezvous, so one ready pod does not mean the attempt started
    (StartTimeout, core/plan.py). Succeeded pods count: a rank that finished first started."""
    status = job.get("status") or {}
    wanted = (job.get("spec") or {}).get("parallelism") or 1
    return (status.get("ready") or 0) + (status.get("succeeded") or 0) >= wanted


def held_seconds(text: str | None) -> float:
    try:
        return max(0.0, float(text or 0))
    except ValueError:  # edited by hand into something else: count nothing rather than fail
        return 0.0


def failure_class(reason: str | None, message: str) -> tuple[str, str]:
    """(class, CamelCase reason) of a failed Job, from the podFailurePolicy rule."""
    match = _RULE_INDEX.search(message) if reason == "PodFailurePolicy" else None
    if match and int(match.group(1)) < len(builders.POD_FAILURE_RULES):
        return builders.POD_FAILURE_RULES[int(match.group(1))]
    if reason == "DeadlineExceeded":
        return "Infrastructure", "DeadlineExceeded"
    return "Application", "TrainerError"


FAILURE_WORDS = {
    "Disrupted": "the pod was evicted, preempted or lost its node (DisruptionTarget); the next attempt resumes from "
                 "the newest complete checkpoint",
    "OOMKilled": "the trainer was killed for memory (exit code 137): raise resources.memory, or lower "
                 "training.batchSize or seqLen",
    "DeadlineExceeded": "the Job ran longer than its activeDeadlineSeconds",
}


def failure_message(reason: str, job: str, kubernetes_message: str) -> str:
    words = FAILURE_WORDS.get(reason) or f"the trainer exited with an error: `kubectl logs job/{job}` shows why"
    return f"{words} ({kubernetes_message})" if kubernetes_message else words


def progress_record(configmap: Mapping[str, Any]) -> ProgressRecord | None:
    """The stage's latest report; None before the first one or when it cannot be read."""
    raw = (configmap.get("data") or {}).get(PROGRESS_FILE) or ""
    if not raw.strip():
        return None
    try:
        return ProgressRecord.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as e:  # a pod wrote garbage: ignore it, keep the last status
        log.warning("ignoring unreadable progress in %s: %s", (configmap.get("metadata") or {}).get("name"), e)
        return None


def observe(pipeline: TrainingPipeline, jobs: Sequence[Mapping[str, Any]], configmaps: Sequence[Mapping[str, Any]],
            rerun_request: str | None = None) -> Observed:
    stages = {s.name for s in pipeline.spec.run_stages}  # the export step's Job and progress too
    attempts: dict[str, list[AttemptState]] = {}
    tokenize: dict[str, list[TokenizeAttempt]] = {}
    for job in jobs:
        labels = (job.get("metadata") or {}).get("labels") or {}
        stage = labels.get(builders.LABEL_STAGE)
        if stage in stages:
            attempts.setdefault(stage, []).append(attempt_state(job))
        elif (tokenized := labels.get(builders_tokenize.LABEL_TOKENIZE)) in stages:  # a stage's tokenize step
            tokenize.setdefault(tokenized, []).append(TokenizeAttempt(
                int(labels.get(builders_tokenize.LABEL_RUN, "0")), attempt_state(job),
                int((job.get("status") or {}).get("succeeded") or 0)))
    records: dict[str, ProgressRecord] = {}
    for configmap in configmaps:
        stage = ((configmap.get("metadata") or {}).get("labels") or {}).get(builders.LABEL_STAGE)
        if stage in stages and (record := progress_record(configmap)) is not None:
            records[stage] = record
    return Observed(attempts=attempts, records=records, rerun_request=rerun_request, tokenize=tokenize)


# ----------------------------------------------------------------------------------------------
# the use-case


async def reconcile(cluster: Cluster, body: Mapping[str, Any], children: Children, now: datetime | None = None,
                    last_status: Mapping[str, Any] | None = None,
                    ensured: dict[str, int] | None = None, resource_version: str | None = None) -> Outcome:
    """Bring the cluster one step closer to the pipeline's spec; idempotent and level-based.

    `last_status` is the status this operator wrote last, when it has one: the status belongs to
    the operator alone, so that is the freshest version, while `body` (from a watch) may not yet
    show our last patch — and what plan() recorded at launch (the resolved inputs) would be lost.

    `children` are the pipeline's stage Jobs and progress ConfigMaps as the watches last showed
    them (children.py says why deciding from that cache is safe); a Job created here is handed
    back to it, so the next pass sees it before its watch event arrives.

    `ensured` maps the uid of each pipeline whose shared objects (ServiceAccount, Role,
    RoleBinding, progress ConfigMaps, claim) this operator process already created to the
    generation it created them for, so a launch costs its own two or three creates instead of a
    dozen 409-and-read round trips. It is only a cache: a restarted operator starts empty and
    re-creates idempotently.

    The status patch is conditional on `resource_version` (default: the body's): when the
    pipeline changed after that version — a spec edit, another writer — the server refuses it
    (409) and `StatusConflict` is raised, so a status computed from an outdated spec is never
    written. `reconcile_current` is the caller that retries from a fresh read.
    """
    now = now or datetime.now(timezone.utc)
    meta = body.get("metadata") or {}
    namespace, name = meta["namespace"], meta["name"]
    version = resource_version or meta.get("resourceVersion")
    old_status = dict(last_status if last_status is not None else body.get("status") or {})
    body = {**body, "status": old_status}
    try:
        pipeline = parse_pipeline(body)
    except ValidationError as e:
        return await report_invalid(cluster, body, describe_validation_error(e), now, version)

    jobs, configmaps = children.jobs(namespace, name), children.progress(namespace, name)
    if not pipeline.spec.suspend:  # a suspension's SIGTERMs are ours, not disruptions
        jobs = await disruptions.note_disruptions(cluster, namespace, name, jobs, children.pods(namespace, name), now)
    root = naming.pipeline_root(naming.VOLUME_ROOT, namespace, name)
    rerun = ((meta.get("annotations") or {}).get(RERUN_ANNOTATION) or "").strip() or None
    observed = observe(pipeline, jobs, configmaps, rerun)
    initializer = observe_initializer(pipeline, jobs, configmaps, previous_status(old_status), now)
    if initializer.failure is not None:  # an input is missing or unreadable: nothing may train
        for stop in attempts_to_end(observed.attempts, initializer.failure):
            await stop_attempt(cluster, pipeline, stop)
        return await report_source_failure(cluster, body, initializer.failure, now, version)
    observed = dataclasses.replace(observed, sources_ready=initializer.ready)
    result = plan(pipeline, observed, root, now)
    launch_initializer = initializer_launch(initializer, result.waiting_for_inputs)  # a stage waits on the check
    record_inputs_check(result.status, pipeline, initializer, launch_initializer, now)
    # A Job already ended keeps its first words: a later pass, once the Job controller has deleted the
    # pods, would overwrite the StartTimeout's message with one that no longer says what they said.
    ended = {j["metadata"]["name"] for j in jobs if ANNOTATION_STOP_REASON in (j["metadata"].get("annotations") or {})}
    for stop in result.stops:
        if stop.action == "fail" and naming.job_name(name, stop.stage, stop.attempt) in ended:
            continue
        await stop_attempt(cluster, pipeline, with_pod_words(stop, children.pods(namespace, name)))

    launched = []
    if result.launches or launch_initializer or result.tokenize_launches:
        uid, generation = pipeline.metadata.uid or f"{namespace}/{name}", pipeline.metadata.generation or 0
        if ensured is None or ensured.get(uid) != generation:
            for obj in builders.build_pipeline_objects(pipeline):
                await cluster.create_if_absent(obj)
            if ensured is not None:
                ensured[uid] = generation
        if launch_initializer:
            await cluster.create_if_absent(builders_sources.build_initializer_config(pipeline, launch_initializer))
            job, created = await cluster.create_if_absent(builders_sources.build_initializer_job(pipeline, launch_initializer))
            children.expect(job)
            if created:
                launched.append(job["metadata"]["name"])
        for step in result.tokenize_launches:  # a pretrain stage's corpus, tokenized before it starts
            await cluster.create_if_absent(builders_tokenize.build_tokenize_config(pipeline, step))
            job, created = await cluster.create_if_absent(builders_tokenize.build_tokenize_job(pipeline, step))
            children.expect(job)
            if created:
                launched.append(job["metadata"]["name"])
        for launch in result.launches:
            await cluster.create_if_absent(builders.build_stage_config(pipeline, launch))
            if (service := builders.build_stage_service(pipeline, launch)) is not None:  # multi-node: pod DNS names
                await cluster.create_if_absent(service)
            job, created = await cluster.create_if_absent(builders.build_stage_job(pipeline, launch))
            children.expect(job)
            if created:
                launched.append(job["metadata"]["name"])
                observe_next_job_latency(pipeline, launch, result.status, observed)

    # Checkpoint retention of stages that just succeeded (before the patch: a crash repeats the edge).
    previous = previous_status(old_status)
    await launch_cleanup_jobs(cluster, pipeline, previous, result.status)
    new_status = result.status.dump()
    patched = await cluster.patch_status(namespace, name, old_status, new_status, version)
    if patched is not None:
        observe_checkpoint_latency(previous, result.status)
        for event in pipeline_events(previous, result.status):
            await cluster.post_event(body, event.type, event.reason, event.message)
    return Outcome(status=new_status, launched=launched, pipeline=pipeline, typed_status=result.status,
                   requeue_after=result.requeue_after, **written(patched, version))


def written(patched: Mapping[str, Any] | None, version: str | None) -> dict[str, Any]:
    """Outcome's fields for a status patch: whether one was sent, the resourceVersion the status
    was computed from, and the pipeline's resourceVersion after it (unchanged when none was sent)."""
    after = (patched.get("metadata") or {}).get("resourceVersion") if patched is not None else None
    return {"status_patched": patched is not None, "read_version": version, "resource_version": after or version}


async def reconcile_current(cluster: Cluster, body: Mapping[str, Any], children: Children,
                            last_status: Mapping[str, Any] | None = None, ensured: dict[str, int] | None = None,
                            resource_version: str | None = None) -> Outcome:
    """`reconcile`, passed again from the pipeline as the server has it now whenever its status
    patch meets a conflict (409): the fresh object carries the newest spec and status, so nothing
    the conflicting writer changed is overwritten and nothing this pass decided is lost — the
    next pass decides it again from the same observations (creating Jobs is idempotent).
    After CONFLICT_RETRIES passes the conflict is raised, as any API error (the daemon retries)."""
    meta = body.get("metadata") or {}
    passes = 0
    while True:
        passes += 1
        try:
            return await reconcile(cluster, body, children, last_status=last_status, ensured=ensured,
                                   resource_version=resource_version)
        except StatusConflict as conflict:
            metrics.observe_status_conflict()
            if passes >= CONFLICT_RETRIES:
                raise
            log.info("status of %s/%s not written: %s; reconciling again from a fresh read",
                     conflict.namespace, conflict.name, conflict.reason)
        fresh = await cluster.get(PIPELINES, meta["namespace"], meta["name"])
        if fresh is None:  # deleted meanwhile: nothing left to write
            return Outcome(status=dict(last_status or body.get("status") or {}))
        body, last_status, resource_version = fresh, None, None  # the server's status is the newest


def with_pod_words(stop: Stop, pods: Sequence[Mapping[str, Any]]) -> Stop:
    """A StartTimeout's message with what the scheduler and kubelet said on its attempt's pods
    (core/starting.py), e.g. "0/2 nodes are available: ...", so the user sees why a rank never started."""
    if stop.action != "fail" or stop.reason != REASON_START_TIMEOUT:
        return stop
    mine = [p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get(builders.LABEL_STAGE) == stop.stage
            and p["metadata"]["labels"].get(builders.LABEL_ATTEMPT) == str(stop.attempt)]
    return dataclasses.replace(stop, message=explain_start_timeout(stop.message, mine))


async def stop_attempt(cluster: Cluster, pipeline: TrainingPipeline, stop: Stop) -> None:
    """Suspend, resume or end one attempt's Job, as plan() decided.

    - suspend: `Job.spec.suspend` — the Job controller deletes the pods with their grace period,
      the trainer saves a checkpoint on SIGTERM, and the same Job resumes later. The pod time so
      far goes onto the Job too (`refinery.dev/held-seconds`): resuming restarts its startTime. With Kueue
      (`queueName`), Kueue owns `spec.suspend` (it would unsuspend an admitted Job), so the Job is
      deleted instead (foreground: it stays until its pods are gone) and re-created, same name and
      attempt, on resume — suspended again until Kueue admits it.
    - fail: the Job's `activeDeadlineSeconds` is set to 1, so the Job controller stops its pods and
      marks it Failed (DeadlineExceeded); the annotations say why, for `attempt_state`. The Job is
      kept as the record of the attempt.
    """
    namespace = pipeline.metadata.namespace
    job = naming.job_name(pipeline.metadata.name, stop.stage, stop.attempt)
    if stop.action == "suspend" and pipeline.spec.queue_name:
        await cluster.delete(JOBS, namespace, job)
    elif stop.action == "suspend":
        await cluster.patch(JOBS, namespace, job, {
            "metadata": {"annotations": {ANNOTATION_HELD_SECONDS: f"{stop.held_seconds or 0:.3f}"}},
            "spec": {"suspend": True},
        })
    elif stop.action == "resume":
        await cluster.patch(JOBS, namespace, job, {"spec": {"suspend": False}})
    else:
        await cluster.patch(JOBS, namespace, job, {
            "metadata": {"annotations": {ANNOTATION_STOP_REASON: stop.reason, ANNOTATION_STOP_MESSAGE: stop.message}},
            "spec": {"activeDeadlineSeconds": 1},
        })


def previous_status(raw: Mapping[str, Any]) -> PipelineStatus | None:
    """The status as last written, typed; None when empty or unreadable (it is then replaced, not merged)."""
    try:
        return PipelineStatus.model_validate(raw) if raw else None
    except ValidationError:
        return None


def observe_checkpoint_latency(old: PipelineStatus | None, new: PipelineStatus) -> None:
    """Checkpoint completed (the trainer's time, µs) -> in .status (now, right after the patch)."""
    now = datetime.now(timezone.utc)
    for stage in new.stages:
        before = old.stage(stage.name) if old else None
        checkpoint = stage.last_checkpoint
        if checkpoint is None or (before is not None and before.last_checkpoint == checkpoint):
            continue
        if (written := parse_time(checkpoint.time)) is not None:
            metrics.observe_checkpoint_latency((now - written).total_seconds())


def observe_next_job_latency(pipeline: TrainingPipeline, launch: Launch, status: PipelineStatus, observed: Observed) -> None:
    """Upstream stage done -> this stage's first Job created. "Done" is the later of the upstream
    Job's completion (second precision) and its trainer's success report (µs precision)."""
    stage = pipeline.spec.stage(launch.stage)
    current = status.stage(launch.stage)
    if not stage.dependencies or current is None or launch.attempt != current.first_attempt:
        return
    done_times = []
    for dependency in stage.dependencies:
        upstream = status.stage(dependency)
        record = observed.records.get(dependency)
        marks = [parse_time(upstream.completion_time if upstream else None),
                 parse_time(record.update_time if record and record.phase == "Succeeded" else None)]
        done_times.append(max((m for m in marks if m is not None), default=None))
    if done_times and None not in done_times:
        metrics.observe_next_job_latency((datetime.now(timezone.utc) - max(done_times)).total_seconds())


def observe_initializer(pipeline: TrainingPipeline, jobs: Sequence[Mapping[str, Any]],
                        configmaps: Sequence[Mapping[str, Any]], previous: PipelineStatus | None,
                        now: datetime | None = None) -> InitializerDecision:
    """The initializer Jobs (labelled `refinery.dev/initializer`) and the FetchResult it reported.
    Only the Jobs annotated with the spec's generation check it; earlier ones just take numbers."""
    initializers = [(attempt_state(j), checked_generation(j)) for j in jobs
                    if builders_sources.LABEL_INITIALIZER in ((j.get("metadata") or {}).get("labels") or {})]
    attempts = [state for state, generation in initializers if generation == pipeline.metadata.generation]
    taken = max((state.attempt for state, _ in initializers), default=0)
    record_name = initializer_record_name(pipeline.metadata.name)
    record = None
    for configmap in configmaps:
        if (configmap.get("metadata") or {}).get("name") != record_name:
            continue
        raw = (configmap.get("data") or {}).get(PROGRESS_FILE) or ""
        if raw.strip():
            try:
                record = FetchResult.model_validate_json(raw)
            except ValidationError as e:
                log.warning("ignoring an unreadable fetch result in %s: %s", record_name, e)
    return decide_initializer(pipeline, attempts, record, previous, taken, now)


def checked_generation(job: Mapping[str, Any]) -> int | None:
    """The spec generation an initializer Job checks (None: unknown, or the API sets none)."""
    try:
        return int(((job.get("metadata") or {}).get("annotations") or {})[ANNOTATION_GENERATION])
    except (KeyError, ValueError):
        return None


async def report_source_failure(cluster: Cluster, body: Mapping[str, Any], result: FetchResult, now: datetime,
                                version: str | None = None) -> Outcome:
    """Failed with the initializer's reason (SourceError, BadData …) naming the input; no stage
    starts (and one still running has been ended: `attempts_to_end`)."""
    meta = body.get("metadata") or {}
    old_status = dict(body.get("status") or {})
    previous = previous_status(old_status)
    typed = source_failure_status(previous, result, meta.get("generation"), now)
    status = typed.dump()
    patched = await cluster.patch_status(meta["namespace"], meta["name"], old_status, status, version)
    if patched is not None and (previous is None or previous.phase != typed.phase):
        await cluster.post_event(body, "Warning", typed.conditions[-1].reason, typed.conditions[-1].message)
    return Outcome(status=status, typed_status=typed, **written(patched, version))


async def report_invalid(cluster: Cluster, body: Mapping[str, Any], message: str, now: datetime,
                         version: str | None = None) -> Outcome:
    """Failed / InvalidSpec with the message naming the field; nothing is created."""
    meta = body.get("metadata") or {}
    old_status = dict(body.get("status") or {})
    status = invalid_spec_status(previous_status(old_status), message, meta.get("generation"), now).dump()
    patched = await cluster.patch_status(meta["namespace"], meta["name"], old_status, status, version)
    return Outcome(status=status, invalid=message, **written(patched, version))
