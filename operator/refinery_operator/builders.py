"""The Kubernetes objects a pipeline owns, as plain dicts (no API calls, no YAML strings).

Every builder is a pure function of the typed pipeline (and, for a stage attempt, the planned
`Launch`), so a table-driven test can check the objects field by field and `k8s.py` only sends
them. Names come from `core.naming`, so an operator restarted at any moment builds the same
objects and finds the ones it created before.

Per pipeline: a ServiceAccount for the stage pods, a Role that lets them `get`/`patch` only the
pipeline's progress ConfigMaps (by `resourceNames`), its RoleBinding, one progress ConfigMap per
stage, and the workspace PVC when `storage.claim` is a template. Per stage attempt: a ConfigMap
holding the attempt's `StageRun` (mounted at /etc/refinery) and the Job that runs it — for a
multi-node stage an Indexed Job plus its headless Service (builders_distributed.py).
"""

from __future__ import annotations

from typing import Any

import yaml

from . import builders_distributed as distributed
from .builders_pod import user_env, user_env_from, user_mounts, user_volumes  # noqa: F401 (used by builders_sources too)
from refinery.api.run import PROGRESS_FILE, ConfigMapReporter, StageRun
from refinery.api.v1alpha1 import API_VERSION, KIND, Stage, StageType, TrainingPipeline
from refinery.core import naming
from refinery.core.plan import Launch
from refinery.core.sources import initializer_record_name, needs_initializer
from refinery.core.stage_run import build_stage_run

APP_NAME = "refinery"
MANAGED_BY = "refinery-operator"
LABEL_PIPELINE = "refinery.dev/pipeline"
LABEL_STAGE = "refinery.dev/stage"
LABEL_ATTEMPT = "refinery.dev/attempt"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
COMPONENT_STAGE = "stage"
COMPONENT_STAGE_CONFIG = "stage-config"
COMPONENT_PROGRESS = "progress"

CONFIG_DIR = "/etc/refinery"
CONFIG_KEY = "stage.yaml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
CONTAINER_NAME = "trainer"
RUN_ARGS = ["run", "--config", CONFIG_PATH]
STAGE_COMMAND = ["refinery-train", *RUN_ARGS]  # one process; see builders_distributed.stage_command
GPU_RESOURCE = "nvidia.com/gpu"
TRAINER_METRICS_PORT = 9400  # the trainer serves here by default inside a pod (trainer/refinery_trainer/metrics.py)
# The stage image runs as this non-root user; fsGroup makes the volume writable for it.
RUN_AS_USER = 1000
SHM_SIZE = "2Gi"  # DataLoader workers and NCCL need more than the runtime's 64 MiB /dev/shm
OOM_EXIT_CODE = 137  # SIGKILL: the kernel's OOM killer (or the kubelet under memory pressure)
# What each rule of the Job's podFailurePolicy means, by index: (failure class, reason). The
# Job's Failed condition names the matching index ("... matching FailJob rule at index 0"), which
# is how a failure is classified without reading pods. Any other failure is the trainer's.
POD_FAILURE_RULES: list[tuple[str, str]] = [
    ("Disruption", "Disrupted"),  # DisruptionTarget: evicted, preempted, node drained or lost
    ("Infrastructure", "OOMKilled"),
    ("Infrastructure", "SourceUnavailable"),  # the initializer's exit code 75 (builders_sources.py): a 5xx or timeout outlasted its retries
]


def labels(pipeline: TrainingPipeline, component: str, stage: str | None = None, attempt: int | None = None) -> dict[str, str]:
    """Recommended `app.kubernetes.io/*` labels plus ours (values are DNS labels, <= 63)."""
    result = {
        "app.kubernetes.io/name": APP_NAME,
        "app.kubernetes.io/instance": pipeline.metadata.name,
        LABEL_COMPONENT: component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_PIPELINE: pipeline.metadata.name,
    }
    if stage is not None:
        result[LABEL_STAGE] = stage
    if attempt is not None:
        result[LABEL_ATTEMPT] = str(attempt)
    return result


def owner_reference(pipeline: TrainingPipeline) -> dict[str, Any]:
    """The pipeline as the controlling owner: its children are garbage-collected with it."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": pipeline.metadata.name,
        "uid": pipeline.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(pipeline: TrainingPipeline, name: str, object_labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": pipeline.metadata.namespace,
        "labels": object_labels,
        "ownerReferences": [owner_reference(pipeline)],
    }


def claim_name(pipeline: TrainingPipeline) -> str:
    """The workspace PVC: the user's existing claim, or the one built from the template."""
    return pipeline.spec.storage.claim_name or naming.dns_name(pipeline.metadata.name, "workspace")


def stage_service_account(pipeline: TrainingPipeline) -> str:
    """The stage pods' ServiceAccount: the user's when the spec names one, else ours."""
    return pipeline.spec.service_account_name or naming.service_account_name(pipeline.metadata.name)


# ----------------------------------------------------------------------------------------------
# per pipeline


def build_workspace_claim(pipeline: TrainingPipeline) -> dict[str, Any] | None:
    """The PVC of a `storage.claim` template (None when the spec names an existing claim)."""
    template = pipeline.spec.storage.claim
    if template is None:
        return None
    spec: dict[str, Any] = {
        "accessModes": list(template.access_modes),
        "resources": {"requests": {"storage": template.size}},
    }
    if template.storage_class_name is not None:
        spec["storageClassName"] = template.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(pipeline, claim_name(pipeline), labels(pipeline, "workspace")),
        "spec": spec,
    }


def build_service_account(pipeline: TrainingPipeline) -> dict[str, Any] | None:
    """Our per-pipeline ServiceAccount (None when the spec brings its own)."""
    if pipeline.spec.service_account_name is not None:
        return None
    name = naming.service_account_name(pipeline.metadata.name)
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(pipeline, name, labels(pipeline, COMPONENT_STAGE)),
        # No token unless a pod asks for one: stage pods do (to report), cleanup pods do not.
        "automountServiceAccountToken": False,
    }


def build_progress_role(pipeline: TrainingPipeline) -> dict[str, Any]:
    """get/patch on this pipeline's progress ConfigMaps only: a pod cannot touch anything else."""
    names = [naming.progress_configmap_name(pipeline.metadata.name, s.name) for s in pipeline.spec.run_stages]
    if needs_initializer(pipeline):  # the initializer's FetchResult (builders_sources.py)
        names.append(initializer_record_name(pipeline.metadata.name))
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata(pipeline, naming.service_account_name(pipeline.metadata.name), labels(pipeline, COMPONENT_STAGE)),
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": names, "verbs": ["get", "patch"]}],
    }


def build_progress_role_binding(pipeline: TrainingPipeline) -> dict[str, Any]:
    name = naming.service_account_name(pipeline.metadata.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": metadata(pipeline, name, labels(pipeline, COMPONENT_STAGE)),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": stage_service_account(pipeline), "namespace": pipeline.metadata.namespace}],
    }


def build_progress_configmap(pipeline: TrainingPipeline, stage: str) -> dict[str, Any]:
    """The one object a stage's pods write: `progress.json`, empty until the first report."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(
            pipeline, naming.progress_configmap_name(pipeline.metadata.name, stage), labels(pipeline, COMPONENT_PROGRESS, stage)
        ),
        "data": {PROGRESS_FILE: ""},
    }


def build_initializer_record(pipeline: TrainingPipeline) -> dict[str, Any]:
    """The ConfigMap the initializer writes its FetchResult to (as stage pods write progress)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(pipeline, initializer_record_name(pipeline.metadata.name), labels(pipeline, COMPONENT_PROGRESS)),
        "data": {PROGRESS_FILE: ""},
    }


def build_pipeline_objects(pipeline: TrainingPipeline) -> list[dict[str, Any]]:
    """Everything a pipeline needs before its first Job, in creation order."""
    objects = [
        build_workspace_claim(pipeline),
        build_service_account(pipeline),
        build_progress_role(pipeline),
        build_progress_role_binding(pipeline),
        *(build_progress_configmap(pipeline, s.name) for s in pipeline.spec.run_stages),
        build_initializer_record(pipeline) if needs_initializer(pipeline) else None,
    ]
    return [o for o in objects if o is not None]


# ----------------------------------------------------------------------------------------------
# per stage attempt


def build_cluster_stage_run(pipeline: TrainingPipeline, launch: Launch) -> StageRun:
    """The attempt's StageRun with cluster paths: /workspace/<namespace>/<pipeline>/<stage>."""
    name, namespace = pipeline.metadata.name, pipeline.metadata.namespace
    root = naming.pipeline_root(naming.VOLUME_ROOT, namespace, name)
    reporter = ConfigMapReporter(namespace=namespace or "default", name=naming.progress_configmap_name(name, launch.stage))
    return build_stage_run(pipeline, launch, root, naming.VOLUME_ROOT, reporter, image=pipeline.spec.image)


def build_stage_config(pipeline: TrainingPipeline, launch: Launch) -> dict[str, Any]:
    """The ConfigMap mounted at /etc/refinery: `stage.yaml` is what `refinery-train run` reads."""
    run = build_cluster_stage_run(pipeline, launch)
    name = naming.stage_config_name(pipeline.metadata.name, launch.stage, launch.attempt)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(pipeline, name, labels(pipeline, COMPONENT_STAGE_CONFIG, launch.stage, launch.attempt)),
        "data": {CONFIG_KEY: yaml.safe_dump(run.dump(), sort_keys=False)},
    }


def build_stage_job(pipeline: TrainingPipeline, launch: Launch) -> dict[str, Any]:
    """One attempt of one stage. backoffLimit 0: the operator, not the Job, owns retries."""
    stage = pipeline.spec.stage(launch.stage)
    name = naming.job_name(pipeline.metadata.name, stage.name, launch.attempt)
    job_labels = labels(pipeline, COMPONENT_STAGE, stage.name, launch.attempt)
    spec: dict[str, Any] = {
        "backoffLimit": 0,  # with N pods: any pod failing fails the attempt (torchrun cannot lose a rank)
        "completions": 1,
        "parallelism": 1,
        "podFailurePolicy": build_pod_failure_policy(),
        "template": {
            "metadata": {"labels": dict(job_labels)},
            "spec": build_pod_spec(pipeline, stage, launch),
        },
    }
    if distributed.is_multi_node(stage):
        spec.update(distributed.multi_node_job_spec(stage, naming.stage_service_name(name)))
    if pipeline.spec.queue_name:
        # Kueue admits the Job by unsuspending it; until then no pod exists (and no GPU is held).
        job_labels = {**job_labels, LABEL_KUEUE_QUEUE: pipeline.spec.queue_name}
        spec["suspend"] = True
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata(pipeline, name, job_labels), "spec": spec}


def build_stage_service(pipeline: TrainingPipeline, launch: Launch) -> dict[str, Any] | None:
    """The headless Service of a multi-node attempt (None for one pod): DNS names of its pods."""
    stage = pipeline.spec.stage(launch.stage)
    if not distributed.is_multi_node(stage):
        return None
    job = naming.job_name(pipeline.metadata.name, stage.name, launch.attempt)
    service_labels = labels(pipeline, COMPONENT_STAGE, stage.name, launch.attempt)
    return distributed.build_headless_service(metadata(pipeline, naming.stage_service_name(job), service_labels), service_labels)


def build_pod_failure_policy() -> dict[str, Any]:
    """FailJob on every rule (the operator retries); the rules only name the failure class.

    Not `Ignore` for DisruptionTarget: the Job would replace an evicted pod in place, unseen by the
    status and by `retries.disruption`, so a stage evicted for ever would never end, and a
    multi-node attempt fails anyway when its peers' collective breaks. No rule on exit code 143
    (SIGTERM): the Job controller evaluates FailJob rules on a *suspended* Job too (its
    getFailJobMessage has no suspended check), and suspending sends SIGTERM, so our own suspension
    would fail the attempt. A deletion or SIGTERM from outside is told apart on the pods instead
    (core/disruption.py)."""
    return {
        "rules": [
            {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER_NAME, "operator": "In", "values": [OOM_EXIT_CODE]}},
        ]
    }


def build_pod_spec(pipeline: TrainingPipeline, stage: Stage, launch: Launch) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # SIGTERM (suspend, eviction, preemption) -> the trainer saves a checkpoint, then exits 143;
        # this bounds how long that may take before the kubelet kills it.
        "terminationGracePeriodSeconds": pipeline.spec.termination_grace_period_seconds,
        "serviceAccountName": stage_service_account(pipeline),
        # The trainer reports progress with this token; our ServiceAccount does not mount it by default.
        "automountServiceAccountToken": True,
        "securityContext": build_pod_security_context(),
        "containers": [with_export_credentials(pipeline, stage, build_trainer_container(pipeline, stage, launch))],
        "volumes": [
            {"name": "workspace", "persistentVolumeClaim": {"claimName": claim_name(pipeline)}},
            {
                "name": "stage-config",
                "configMap": {"name": naming.stage_config_name(pipeline.metadata.name, stage.name, launch.attempt)},
            },
            {"name": "tmp", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}},
            *user_volumes(pipeline, [stage]),
        ],
    }
    if distributed.is_multi_node(stage):
        job = naming.job_name(pipeline.metadata.name, stage.name, launch.attempt)
        attempt = {k: v for k, v in labels(pipeline, COMPONENT_STAGE, stage.name, launch.attempt).items()
                   if k in (LABEL_PIPELINE, LABEL_STAGE, LABEL_ATTEMPT)}
        spec.update(distributed.multi_node_pod_spec(naming.stage_service_name(job), attempt))
    spec.update(build_placement(stage))
    return spec


def with_export_credentials(pipeline: TrainingPipeline, stage: Stage, container: dict[str, Any]) -> dict[str, Any]:
    """The export step's container gets `spec.export.credentialsSecret` as its environment (S3 keys,
    HF_TOKEN): by reference, so no credential is ever in the Job, its ConfigMap or the status."""
    export = pipeline.spec.export
    if stage.type == StageType.export and export is not None and export.credentials_secret:
        container = {**container, "envFrom": [*container.get("envFrom", []), {"secretRef": {"name": export.credentials_secret}}]}
    return container


def build_pod_security_context() -> dict[str, Any]:
    """Non-root as RUN_AS_USER; fsGroup makes the workspace volume writable for it."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def build_placement(stage: Stage) -> dict[str, Any]:
    """The stage's nodeSelector and tolerations, as pod spec fields (only those it sets)."""
    placement: dict[str, Any] = {}
    if stage.resources.node_selector:
        placement["nodeSelector"] = dict(stage.resources.node_selector)
    if stage.resources.tolerations:
        placement["tolerations"] = [t.dump() for t in stage.resources.tolerations]
    return placement


def build_trainer_container(pipeline: TrainingPipeline, stage: Stage, launch: Launch) -> dict[str, Any]:
    job = naming.job_name(pipeline.metadata.name, stage.name, launch.attempt)
    # Trainer metrics (loss, tokens/s, reward …) for the chart's PodMonitor, which selects this port by name.
    ports = [{"name": "metrics", "containerPort": TRAINER_METRICS_PORT, "protocol": "TCP"}]
    env = build_env(pipeline, stage, launch)
    if distributed.is_multi_node(stage):
        ports.append(distributed.rendezvous_port())
        env = distributed.index_env() + env
    return {
        "name": CONTAINER_NAME,
        "image": pipeline.spec.image,
        "imagePullPolicy": pipeline.spec.image_pull_policy,
        "command": distributed.stage_command(stage, job, naming.stage_service_name(job), RUN_ARGS),
        "env": env + user_env(pipeline, [stage]),
        **({"envFrom": env_from} if (env_from := user_env_from(pipeline, [stage])) else {}),
        "ports": ports,
        "resources": build_resources(stage),
        "volumeMounts": [
            {"name": "workspace", "mountPath": naming.VOLUME_ROOT},
            {"name": "stage-config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
            *user_mounts([stage]),
        ],
        "securityContext": build_container_security_context(),
        # The trainer writes its result as the termination message; the log tail otherwise.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def build_env(pipeline: TrainingPipeline, stage: Stage, launch: Launch) -> list[dict[str, Any]]:
    """Identity of the attempt (for logs and metric labels); the StageRun holds the rest."""
    return [
        {"name": "REFINERY_PIPELINE", "value": pipeline.metadata.name},
        {"name": "REFINERY_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "REFINERY_STAGE", "value": stage.name},
        {"name": "REFINERY_STAGE_TYPE", "value": stage.type},
        {"name": "REFINERY_ATTEMPT", "value": str(launch.attempt)},
        {"name": "REFINERY_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "REFINERY_CONFIG", "value": CONFIG_PATH},
        *CACHE_ENV,
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]


# The root filesystem is read-only (readOnlyRootFilesystem): every cache the trainer's libraries
# write goes to the emptyDir at /tmp, set here rather than trusted to the image, so that a user's
# own trainer image works too. HF hub and datasets (HF_HOME), Triton kernels (torch.compile,
# DeepSpeed), torch C++/CUDA extensions (DeepSpeed ops), torch.compile's Inductor, matplotlib's
# font cache (report plots), XDG caches (pip, numba …) and HOME for anything else.
CACHE_ENV = [
    {"name": "HOME", "value": "/tmp"},
    {"name": "HF_HOME", "value": "/tmp/huggingface"},
    {"name": "TRITON_CACHE_DIR", "value": "/tmp/triton"},
    {"name": "TORCH_EXTENSIONS_DIR", "value": "/tmp/torch_extensions"},
    {"name": "TORCHINDUCTOR_CACHE_DIR", "value": "/tmp/torchinductor"},
    {"name": "MPLCONFIGDIR", "value": "/tmp/matplotlib"},
    {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"},
    {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
]


def build_container_security_context() -> dict[str, Any]:
    """What the `restricted` Pod Security Standard asks of every container, and a read-only root
    filesystem: /workspace, /tmp and /dev/shm are the only places a Refinery container writes."""
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def build_resources(stage: Stage) -> dict[str, Any]:
    """Requests equal limits (Guaranteed QoS when cpu and memory are set, so no eviction first)."""
    amounts: dict[str, Any] = {}
    if stage.resources.cpu:
        amounts["cpu"] = stage.resources.cpu
    if stage.resources.memory:
        amounts["memory"] = stage.resources.memory
    if stage.resources.gpus > 0:
        amounts[GPU_RESOURCE] = str(stage.resources.gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)} if amounts else {}
