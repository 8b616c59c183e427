"""A pretrain stage's tokenize step (core/tokenize.py) as an Indexed Job and its config, as dicts.

`completionMode: Indexed`, `completions = parallelism = data.tokenize.workers`: pod i runs
`refinery-train tokenize --config … --index $(JOB_COMPLETION_INDEX) --of N` on the stage's own
StageRun, so it reads the same (fetched) shards, builds the same tokenizer and writes the token
files where the stage will look. CPU pods: `data.tokenize.cpu`/`memory`, no GPU, and not the
stage's nodeSelector/tolerations (those place GPU pods; tokenizing needs none). backoffLimit 0 as
for stages: the operator owns retries (a new Job, which skips the shards already complete).
Labelled like the initializer: component `stage` (watched with the stage Jobs, children.py) but
no `refinery.dev/stage`, so it is never read as an attempt of the stage itself.
"""

from __future__ import annotations

from typing import Any

import yaml

from . import builders
from . import builders_distributed as distributed
from refinery.api.v1alpha1 import TrainingPipeline
from refinery.core import naming
from refinery.core.tokenize import TokenizeLaunch, tokenize_job_name

LABEL_TOKENIZE = "refinery.dev/tokenize"  # the stage whose corpus the Job tokenizes
LABEL_RUN = "refinery.dev/run"  # the stage's run it tokenizes for (a re-run gets its own step)
COMPONENT_TOKENIZE_CONFIG = "tokenize-config"


def tokenize_labels(pipeline: TrainingPipeline, launch: TokenizeLaunch) -> dict[str, str]:
    stage = launch.stage_launch
    return {**builders.labels(pipeline, builders.COMPONENT_STAGE, attempt=launch.attempt),
            LABEL_TOKENIZE: stage.stage, LABEL_RUN: str(stage.run)}


def tokenize_config_name(pipeline: TrainingPipeline, launch: TokenizeLaunch) -> str:
    stage = launch.stage_launch
    return naming.dns_name(pipeline.metadata.name, stage.stage, "tokenize", stage.run, launch.attempt, "config")


def build_tokenize_config(pipeline: TrainingPipeline, launch: TokenizeLaunch) -> dict[str, Any]:
    """The stage's StageRun, without its reporter: the workers do not report the stage's progress."""
    run = builders.build_cluster_stage_run(pipeline, launch.stage_launch).model_copy(update={"reporter": None})
    labels = builders.labels(pipeline, COMPONENT_TOKENIZE_CONFIG, launch.stage_launch.stage, launch.attempt)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": builders.metadata(pipeline, tokenize_config_name(pipeline, launch), labels),
        "data": {builders.CONFIG_KEY: yaml.safe_dump(run.dump(), sort_keys=False)},
    }


def build_tokenize_job(pipeline: TrainingPipeline, launch: TokenizeLaunch) -> dict[str, Any]:
    stage = pipeline.spec.stage(launch.stage_launch.stage)
    spec = stage.data.tokenize
    name = tokenize_job_name(pipeline.metadata.name, stage.name, launch.stage_launch.run, launch.attempt)
    labels = tokenize_labels(pipeline, launch)
    amounts = {"cpu": spec.cpu, "memory": spec.memory}
    container = {
        "name": builders.CONTAINER_NAME,
        "image": pipeline.spec.image,
        "imagePullPolicy": pipeline.spec.image_pull_policy,
        "command": ["refinery-train", "tokenize", "--config", builders.CONFIG_PATH,
                    "--index", f"$({distributed.INDEX_ENV})", "--of", str(launch.workers)],
        "env": [
            *distributed.index_env(),
            {"name": "HOME", "value": "/tmp"},
            {"name": "HF_HOME", "value": "/tmp/huggingface"},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            *builders.user_env(pipeline, [stage]),
        ],
        "resources": {"requests": dict(amounts), "limits": dict(amounts)},
        "volumeMounts": [
            {"name": "workspace", "mountPath": naming.VOLUME_ROOT},
            {"name": "stage-config", "mountPath": builders.CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            *builders.user_mounts([stage]),
        ],
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if env_from := builders.user_env_from(pipeline, [stage]):
        container["envFrom"] = env_from
    pod = {
        "restartPolicy": "Never",
        "serviceAccountName": builders.stage_service_account(pipeline),
        "automountServiceAccountToken": False,  # it reports nothing to the API: its Job's status is the record
        "securityContext": builders.build_pod_security_context(),
        "containers": [container],
        "volumes": [
            {"name": "workspace", "persistentVolumeClaim": {"claimName": builders.claim_name(pipeline)}},
            {"name": "stage-config", "configMap": {"name": tokenize_config_name(pipeline, launch)}},
            {"name": "tmp", "emptyDir": {}},
            *builders.user_volumes(pipeline, [stage]),
        ],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": builders.metadata(pipeline, name, labels),
        "spec": {"completionMode": "Indexed", "completions": launch.workers, "parallelism": launch.workers,
                 "backoffLimit": 0, "podFailurePolicy": builders.build_pod_failure_policy(),
                 "template": {"metadata": {"labels": dict(labels)}, "spec": pod}},
    }
