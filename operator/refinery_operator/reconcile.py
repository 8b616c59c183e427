"""The operator's one use-case: reconcile a pipeline with what runs in the cluster.

    observe (Jobs -> AttemptState, progress ConfigMaps -> ProgressRecord)
      -> core.plan (the same decisions as local mode)
      -> create the planned attempts' ConfigMap + Job (create-if-absent: names are deterministic)
      -> patch .status only when it changed

No kopf here: an invalid spec comes back as `Outcome.invalid`, and the kopf glue in
`handlers.py` maps it to `kopf.PermanentError`. The observation functions are pure, so the
mapping from Job conditions to attempt states is tested without an API.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from . import builders
from .api.load import explain
from .api.run import PROGRESS_FILE, ProgressRecord
from .api.v1alpha1 import PipelineStatus, TrainingPipeline
from .cleanup import launch_cleanup_jobs
from .core import naming
from .core.plan import AttemptState, Observed, invalid_spec_status, plan
from .k8s import CONFIGMAPS, JOBS, Cluster

log = logging.getLogger(__name__)

# Index of the Job's podFailurePolicy rule that matched -> the platform, not the trainer, failed.
# Kubernetes reports it only in the condition's message ("... matching FailJob rule at index 0").
_RULE_INDEX = re.compile(r"rule at index (\d+)")


@dataclass
class Outcome:
    status: dict[str, Any]
    launched: list[str] = field(default_factory=list)  # Job names created by this call
    status_patched: bool = False
    invalid: str | None = None  # why the spec cannot run


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
    """What a stage Job says about its attempt, read the way `kubectl describe job` shows it."""
    labels = (job.get("metadata") or {}).get("labels") or {}
    status = job.get("status") or {}
    attempt = int(labels.get(builders.LABEL_ATTEMPT, "1"))
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    start = status.get("startTime")
    if "Complete" in conditions:
        return AttemptState(attempt, "Succeeded", start_time=start,
                            completion_time=status.get("completionTime") or conditions["Complete"].get("lastTransitionTime"))
    if "Failed" in conditions:
        failed = conditions["Failed"]
        infrastructure, reason = failure_class(failed.get("reason"), failed.get("message") or "")
        return AttemptState(attempt, "Failed", reason=reason, message=failed.get("message"), infrastructure=infrastructure,
                            start_time=start, completion_time=failed.get("lastTransitionTime"))
    if status.get("active") or status.get("ready"):
        return AttemptState(attempt, "Running", start_time=start)
    return AttemptState(attempt, "Pending", start_time=start)


def failure_class(reason: str | None, message: str) -> tuple[bool, str]:
    """(infrastructure?, CamelCase reason) of a failed Job, from the podFailurePolicy rule."""
    match = _RULE_INDEX.search(message) if reason == "PodFailurePolicy" else None
    if match and int(match.group(1)) < len(builders.POD_FAILURE_RULES):
        return builders.POD_FAILURE_RULES[int(match.group(1))]
    if reason == "DeadlineExceeded":
        return True, "DeadlineExceeded"
    return False, "TrainerError"


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


def observe(pipeline: TrainingPipeline, jobs: Sequence[Mapping[str, Any]], configmaps: Sequence[Mapping[str, Any]]) -> Observed:
    stages = {s.name for s in pipeline.spec.stages}
    attempts: dict[str, list[AttemptState]] = {}
    for job in jobs:
        stage = ((job.get("metadata") or {}).get("labels") or {}).get(builders.LABEL_STAGE)
        if stage in stages:
            attempts.setdefault(stage, []).append(attempt_state(job))
    records: dict[str, ProgressRecord] = {}
    for configmap in configmaps:
        stage = ((configmap.get("metadata") or {}).get("labels") or {}).get(builders.LABEL_STAGE)
        if stage in stages and (record := progress_record(configmap)) is not None:
            records[stage] = record
    return Observed(attempts=attempts, records=records)


# ----------------------------------------------------------------------------------------------
# the use-case


async def reconcile(cluster: Cluster, body: Mapping[str, Any], now: datetime | None = None,
                    last_status: Mapping[str, Any] | None = None) -> Outcome:
    """Bring the cluster one step closer to the pipeline's spec; idempotent and level-based.

    `last_status` is the status this operator wrote last, when it has one: the status belongs to
    the operator alone, so that is the freshest version, while `body` (from a watch) may not yet
    show our last patch — and what plan() recorded at launch (the resolved inputs) would be lost.
    """
    now = now or datetime.now(timezone.utc)
    meta = body.get("metadata") or {}
    namespace, name = meta["namespace"], meta["name"]
    old_status = dict(last_status if last_status is not None else body.get("status") or {})
    body = {**body, "status": old_status}
    try:
        pipeline = parse_pipeline(body)
    except ValidationError as e:
        return await report_invalid(cluster, body, describe_validation_error(e), now)

    owned = {builders.LABEL_PIPELINE: name}
    jobs = await cluster.list_labelled(JOBS, namespace, {**owned, builders.LABEL_COMPONENT: builders.COMPONENT_STAGE})
    configmaps = await cluster.list_labelled(CONFIGMAPS, namespace, {**owned, builders.LABEL_COMPONENT: builders.COMPONENT_PROGRESS})
    root = naming.pipeline_root(naming.VOLUME_ROOT, namespace, name)
    result = plan(pipeline, observe(pipeline, jobs, configmaps), root, now)

    launched = []
    if result.launches:
        for obj in builders.build_pipeline_objects(pipeline):
            await cluster.create_if_absent(obj)
        for launch in result.launches:
            await cluster.create_if_absent(builders.build_stage_config(pipeline, launch))
            if (service := builders.build_stage_service(pipeline, launch)) is not None:  # multi-node: pod DNS names
                await cluster.create_if_absent(service)
            job, created = await cluster.create_if_absent(builders.build_stage_job(pipeline, launch))
            if created:
                launched.append(job["metadata"]["name"])

    # Checkpoint retention of stages that just succeeded (before the patch: a crash repeats the edge).
    await launch_cleanup_jobs(cluster, pipeline, old_status, result.status)
    new_status = result.status.dump()
    patched = await cluster.patch_status(namespace, name, old_status, new_status)
    return Outcome(status=new_status, launched=launched, status_patched=patched)


async def report_invalid(cluster: Cluster, body: Mapping[str, Any], message: str, now: datetime) -> Outcome:
    """Failed / InvalidSpec with the message naming the field; nothing is created."""
    meta = body.get("metadata") or {}
    old_status = dict(body.get("status") or {})
    try:
        previous = PipelineStatus.model_validate(old_status) if old_status else None
    except ValidationError:
        previous = None  # a status we cannot read is replaced, not merged
    status = invalid_spec_status(previous, message, meta.get("generation"), now).dump()
    patched = await cluster.patch_status(meta["namespace"], meta["name"], old_status, status)
    return Outcome(status=status, status_patched=patched, invalid=message)
