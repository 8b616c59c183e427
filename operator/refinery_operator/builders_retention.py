"""The cleanup Job: checkpoint retention (`spec.checkpoints`) applied on the volume, as a dict.

One short Job per succeeded stage attempt, `<pipeline>-<stage>-<attempt>-prune`, running
`refinery-train prune` from the pipeline's own image on the workspace volume — the operator pod
never mounts the volume and never deletes files. The pod needs no API access: no token is
mounted. It runs non-root like the stage pods, with small fixed requests; deletion is idempotent,
so the Job may retry (`backoffLimit`) and an operator that creates it twice (same name) is harmless.
Finished Jobs are removed after `TTL_S`; they are never re-created (core/retention.py: edge-triggered).
A re-run (`status.stages[].run` > 0) trains in `<stage>/reruns/<run>/`: its prune Job applies the
policy there, to the run that just succeeded; each earlier run's folder was pruned when it succeeded.
"""

from __future__ import annotations

from typing import Any

from . import builders
from refinery.api.v1alpha1 import PipelineStatus, TrainingPipeline
from refinery.core import naming, retention

COMPONENT_CLEANUP = "cleanup"
CLEANUP_CONTAINER = "prune"
BACKOFF_LIMIT = 3
TTL_S = 24 * 3600
RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}}


def build_cleanup_job(pipeline: TrainingPipeline, status: PipelineStatus, stage: str) -> dict[str, Any]:
    """The prune Job of `stage` (its current, succeeded attempt), protecting what others still read."""
    assert pipeline.spec.checkpoints is not None, "no retention policy"
    stage_status = status.stage(stage)
    attempt = stage_status.attempt if stage_status else 1
    run = stage_status.run if stage_status else 0  # a re-run's checkpoints are in its own folder
    name, namespace = pipeline.metadata.name, pipeline.metadata.namespace
    root = naming.pipeline_root(naming.VOLUME_ROOT, namespace, name)
    protected = retention.protected_paths(pipeline, status, stage, root, naming.VOLUME_ROOT)
    args = retention.prune_arguments(pipeline.spec.checkpoints, naming.stage_dir(root, stage, run), protected)
    job_labels = builders.labels(pipeline, COMPONENT_CLEANUP, stage, attempt)
    pod = {
        "restartPolicy": "Never",
        "serviceAccountName": builders.stage_service_account(pipeline),
        "automountServiceAccountToken": False,  # it talks to no API
        "securityContext": builders.build_pod_security_context(),
        "containers": [{
            "name": CLEANUP_CONTAINER,
            "image": pipeline.spec.image,
            "imagePullPolicy": pipeline.spec.image_pull_policy,
            "command": ["refinery-train", *args],
            "resources": RESOURCES,
            "volumeMounts": [{"name": "workspace", "mountPath": naming.VOLUME_ROOT}],
            "securityContext": builders.build_container_security_context(),
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }],
        "volumes": [{"name": "workspace", "persistentVolumeClaim": {"claimName": builders.claim_name(pipeline)}}],
    }
    pod.update(builders.build_placement(pipeline.spec.stage(stage)))  # where the stage ran, the volume mounts
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": builders.metadata(pipeline, naming.cleanup_job_name(name, stage, attempt), job_labels),
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "ttlSecondsAfterFinished": TTL_S,
            "template": {"metadata": {"labels": dict(job_labels)}, "spec": pod},
        },
    }
