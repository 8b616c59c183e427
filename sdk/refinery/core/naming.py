"""Deterministic names and paths of everything a pipeline owns.

Names are pure functions of (pipeline, stage, attempt), so an operator that restarts at any
moment computes the same Job name and finds the Job it created before instead of a duplicate.
"""

from __future__ import annotations

import hashlib
from pathlib import PurePosixPath

from ..api.run import MODEL_DIR

MAX_NAME = 63  # DNS label: Job names end up in pod labels, which are capped at 63
VOLUME_ROOT = "/workspace"


def dns_name(*parts: object, limit: int = MAX_NAME) -> str:
    """Join parts with '-'; when too long, truncate and append a short hash of the full name."""
    full = "-".join(str(p) for p in parts)
    if len(full) <= limit:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    return f"{full[: limit - len(digest) - 1].rstrip('-')}-{digest}"


# A multi-node stage's pods are named by the Job controller `<job>-<index>` (their hostname, a DNS
# label): Job names leave room for "-" and a two-digit index.
JOB_NAME_MAX = MAX_NAME - 3


def job_name(pipeline: str, stage: str, attempt: int) -> str:
    return dns_name(pipeline, stage, attempt, limit=JOB_NAME_MAX)


def stage_service_name(job: str) -> str:
    """Headless Service of a multi-node attempt: named as its Job, so rank 0 is `<job>-0.<job>`."""
    return job


def cleanup_job_name(pipeline: str, stage: str, attempt: int) -> str:
    """Job that applies checkpoint retention to a stage once its attempt `attempt` succeeded."""
    return dns_name(pipeline, stage, attempt, "prune")


def stage_config_name(pipeline: str, stage: str, attempt: int) -> str:
    """ConfigMap with the StageRun of one attempt (mounted into its pod)."""
    return dns_name(pipeline, stage, attempt, "config")


def progress_configmap_name(pipeline: str, stage: str) -> str:
    """ConfigMap a stage's pods report progress to (the only object they may write)."""
    return dns_name(pipeline, stage, "progress")


def service_account_name(pipeline: str) -> str:
    return dns_name(pipeline, "stage")


def pipeline_root(volume_root: str, namespace: str | None, pipeline: str) -> str:
    """`<volume>/<namespace>/<pipeline>`; local mode has no namespace: `<workdir>/<pipeline>`."""
    root = PurePosixPath(volume_root)
    return str(root / namespace / pipeline if namespace else root / pipeline)


RERUNS_DIR = "reruns"


def stage_dir(pipeline_root_dir: str, stage: str, run: int = 0) -> str:
    """The stage's folder; a re-run (`status.stages[].run` > 0) trains in `<stage>/reruns/<run>/`,
    so it never resumes from a checkpoint of the run it replaces (the trainer resumes from the
    newest complete checkpoint under its stage folder) and the replaced model stays until then."""
    base = PurePosixPath(pipeline_root_dir) / stage
    return str(base / RERUNS_DIR / str(run) if run else base)


def model_dir(pipeline_root_dir: str, stage: str, run: int = 0) -> str:
    """Where a stage's final model lands (save_pretrained, renamed into place)."""
    return str(PurePosixPath(stage_dir(pipeline_root_dir, stage, run)) / MODEL_DIR)
