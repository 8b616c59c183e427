"""The pipeline's initializer Job (`refinery-train fetch`) and its config, as dicts.

One Job per pipeline and generation of its spec, before its first stage (core/sources.py says
when; the Job is annotated with the generation it checks): same image, same volume, the
pipeline's and every stage's env/envFrom and volume mounts (the credentials and caches the
sources need), the stage ServiceAccount (it reports its FetchResult to one ConfigMap, which the
Role names). Exit code 75 (a transient failure) has its own podFailurePolicy rule, so the
operator retries it as an infrastructure failure without reading the pod.
"""

from __future__ import annotations

from typing import Any

import yaml

from . import builders
from .api.run import ConfigMapReporter
from .api.v1alpha1 import TrainingPipeline
from .core import naming
from .core.sources import (
    ANNOTATION_GENERATION, build_fetch_run, initializer_config_name, initializer_job_name, initializer_record_name,
)

LABEL_INITIALIZER = "refinery.dev/initializer"
COMPONENT_INITIALIZER_CONFIG = "initializer-config"
CONFIG_KEY = "fetch.yaml"
EXIT_TRANSIENT = 75  # refinery_trainer.sources.fetch.EXIT_TRANSIENT


def initializer_labels(pipeline: TrainingPipeline, attempt: int) -> dict[str, str]:
    # component "stage": the Job is watched and cached with the stage Jobs (children.py).
    return {**builders.labels(pipeline, builders.COMPONENT_STAGE, attempt=attempt), LABEL_INITIALIZER: "sources"}


def build_initializer_config(pipeline: TrainingPipeline, attempt: int) -> dict[str, Any]:
    name, namespace = pipeline.metadata.name, pipeline.metadata.namespace
    root = naming.pipeline_root(naming.VOLUME_ROOT, namespace, name)
    reporter = ConfigMapReporter(namespace=namespace or "default", name=initializer_record_name(name))
    run = build_fetch_run(pipeline, root, naming.VOLUME_ROOT, reporter)
    labels = builders.labels(pipeline, COMPONENT_INITIALIZER_CONFIG, attempt=attempt)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": builders.metadata(pipeline, initializer_config_name(name, attempt), labels),
        "data": {CONFIG_KEY: yaml.safe_dump(run.dump(), sort_keys=False)},
    }


def build_initializer_job(pipeline: TrainingPipeline, attempt: int) -> dict[str, Any]:
    stages = list(pipeline.spec.stages)
    name = initializer_job_name(pipeline.metadata.name, attempt)
    labels = initializer_labels(pipeline, attempt)
    container = {
        "name": builders.CONTAINER_NAME,
        "image": pipeline.spec.image,
        "imagePullPolicy": pipeline.spec.image_pull_policy,
        "command": ["refinery-train", "fetch", "--config", f"{builders.CONFIG_DIR}/{CONFIG_KEY}"],
        "env": [
            {"name": "HOME", "value": "/tmp"},
            {"name": "HF_HOME", "value": "/tmp/huggingface"},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            *builders.user_env(pipeline, stages),
        ],
        "volumeMounts": [
            {"name": "workspace", "mountPath": naming.VOLUME_ROOT},
            {"name": "stage-config", "mountPath": builders.CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            *builders.user_mounts(stages),
        ],
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if env_from := builders.user_env_from(pipeline, stages):
        container["envFrom"] = env_from
    policy = builders.build_pod_failure_policy()
    policy["rules"].append({"action": "FailJob", "onExitCodes": {
        "containerName": builders.CONTAINER_NAME, "operator": "In", "values": [EXIT_TRANSIENT]}})
    pod = {
        "restartPolicy": "Never",
        "serviceAccountName": builders.stage_service_account(pipeline),
        "automountServiceAccountToken": True,  # to write its FetchResult to the record ConfigMap
        "securityContext": builders.build_pod_security_context(),
        "containers": [container],
        "volumes": [
            {"name": "workspace", "persistentVolumeClaim": {"claimName": builders.claim_name(pipeline)}},
            {"name": "stage-config", "configMap": {"name": initializer_config_name(pipeline.metadata.name, attempt)}},
            {"name": "tmp", "emptyDir": {}},
            *builders.user_volumes(pipeline, stages),
        ],
    }
    meta = builders.metadata(pipeline, name, labels)
    if pipeline.metadata.generation is not None:  # which spec it checks (core/sources.py)
        meta["annotations"] = {ANNOTATION_GENERATION: str(pipeline.metadata.generation)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {"backoffLimit": 0, "completions": 1, "parallelism": 1, "podFailurePolicy": policy,
                 "template": {"metadata": {"labels": dict(labels)}, "spec": pod}},
    }
