"""The pipeline's initializer Job (`refinery-train fetch`) and its config, as dicts.

One Job per pipeline and generation of its spec, before its first stage (core/sources.py says
when; the Job is annotated with the generation it checks): same image, same volume, and only
what a fetch reads (`fetch_env` below): the variables of the fetchers' clients, the `envFrom`
of the pipeline and of the stages that name a remote source, and the mounts those variables
point into — not every stage's training secrets at once; the stage ServiceAccount (it reports its FetchResult to one ConfigMap, which the
Role names). Exit code 75 (a transient failure) has its own podFailurePolicy rule, so the
operator retries it as an infrastructure failure without reading the pod.
"""

from __future__ import annotations

from typing import Any

import yaml

from . import builders
from refinery.api.run import ConfigMapReporter
from refinery.api.sources import stage_sources
from refinery.api.v1alpha1 import Stage, TrainingPipeline
from refinery.core import naming
from refinery.core.sources import (
    ANNOTATION_GENERATION, build_fetch_run, initializer_config_name, initializer_job_name, initializer_record_name,
)

LABEL_INITIALIZER = "refinery.dev/initializer"
COMPONENT_INITIALIZER_CONFIG = "initializer-config"
CONFIG_KEY = "fetch.yaml"
EXIT_TRANSIENT = 75  # refinery_trainer.sources.fetch.EXIT_TRANSIENT


# What the fetchers' clients read (boto3 for s3://, huggingface_hub for hf://, urllib for https://):
# credentials, endpoints and settings by prefix, and the proxies and CA bundles any of them use.
FETCH_ENV_PREFIXES = {"s3": ("AWS_",), "hf-model": ("HF_", "HUGGING_FACE_"), "hf-dataset": ("HF_", "HUGGING_FACE_"), "https": ()}
FETCH_ENV_ANY = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
                 "CURL_CA_BUNDLE")


def fetching_stages(pipeline: TrainingPipeline) -> list[Stage]:
    """The stages that name a remote source: only their envFrom reaches the initializer."""
    return [s for s in pipeline.spec.stages if any(x.ref.remote for x in stage_sources(s))]


def fetch_env(pipeline: TrainingPipeline) -> list[dict[str, Any]]:
    """The user's variables a fetch reads, of the schemes the pipeline fetches (none without a remote source)."""
    kinds = {x.ref.kind for s in pipeline.spec.stages for x in stage_sources(s) if x.ref.remote}
    if not kinds:
        return []
    prefixes = tuple(p for k in kinds for p in FETCH_ENV_PREFIXES[k]) + FETCH_ENV_ANY
    return [v for v in builders.user_env(pipeline, list(pipeline.spec.stages)) if v["name"].upper().startswith(prefixes)]


def fetch_mounts(pipeline: TrainingPipeline, env: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stages' mounts a kept variable points into (a CA bundle, HF_HOME on a shared cache)."""
    values = [v["value"] for v in env if "value" in v]
    return [m for m in builders.user_mounts(list(pipeline.spec.stages))
            if any(x == m["mountPath"] or x.startswith(m["mountPath"].rstrip("/") + "/") for x in values)]


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
    name = initializer_job_name(pipeline.metadata.name, attempt)
    env = fetch_env(pipeline)
    mounts = fetch_mounts(pipeline, env)
    labels = initializer_labels(pipeline, attempt)
    container = {
        "name": builders.CONTAINER_NAME,
        "image": pipeline.spec.image,
        "imagePullPolicy": pipeline.spec.image_pull_policy,
        "command": ["refinery-train", "fetch", "--config", f"{builders.CONFIG_DIR}/{CONFIG_KEY}"],
        "env": [
            *builders.CACHE_ENV,
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            *env,
        ],
        "volumeMounts": [
            {"name": "workspace", "mountPath": naming.VOLUME_ROOT},
            {"name": "stage-config", "mountPath": builders.CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            *mounts,
        ],
        "securityContext": builders.build_container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if env_from := builders.user_env_from(pipeline, fetching_stages(pipeline)):
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
            *(v.dump() for v in pipeline.spec.volumes or () if v.name in {m["name"] for m in mounts}),
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
