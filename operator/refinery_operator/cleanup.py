"""Checkpoint retention, the operator's side: start a prune Job for each stage that just succeeded.

`reconcile` calls `launch_cleanup_jobs` once per pass, after `plan()` and before it patches the
status (so a crash between the two repeats the edge instead of losing it; the deterministic Job
name makes the repeat a no-op). See core/retention.py for what is kept and why.
"""

from __future__ import annotations

from refinery.api.v1alpha1 import PipelineStatus, TrainingPipeline
from .builders_retention import build_cleanup_job
from refinery.core.retention import stages_to_prune
from .k8s import Cluster


async def launch_cleanup_jobs(cluster: Cluster, pipeline: TrainingPipeline, previous: PipelineStatus | None,
                              new_status: PipelineStatus) -> list[str]:
    """Create the prune Job of every stage whose attempt succeeded since `previous`; their names.

    `previous` is None when the old status was empty or unreadable (`reconcile.previous_status`):
    every succeeded stage then counts as new, which is harmless since creation is idempotent.
    """
    if pipeline.spec.checkpoints is None:
        return []
    created = []
    for stage in stages_to_prune(pipeline, previous, new_status):
        job, is_new = await cluster.create_if_absent(build_cleanup_job(pipeline, new_status, stage))
        if is_new:
            created.append(job["metadata"]["name"])
    return created
