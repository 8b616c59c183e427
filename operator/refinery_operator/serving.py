"""Serving hand-off: a vLLM Deployment + Service (or a KServe InferenceService) for an exported model.

    objects = vllm_manifests(ServeOptions(name="tiny-chat", model_uri="s3://models/tiny-chat/rlhf"))
    isvc = kserve_manifest(ServeOptions(...))

Builders return dicts (like builders.py); `refinery serve-manifest` prints them as YAML. Where
the model comes from decides how the pod gets it:
- `s3://`: an init container (the AWS CLI image) syncs it into an emptyDir that vLLM serves;
  credentials from the Secret `--credentials-secret` names (AWS_* keys);
- `hf://org/name`: vLLM downloads it itself (HF_TOKEN from that Secret, for a private repo);
- `pvc://<claim>/<path>`: the claim is mounted read-only.
Every container runs as a non-root user with no privilege escalation and no capabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

# Pinned, not `latest`: a manifest printed today must mean the same server tomorrow.
VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"
AWS_CLI_IMAGE = "amazon/aws-cli:2.31.0"
PORT = 8000
MODEL_MOUNT = "/models"
NON_ROOT_UID = 1000


@dataclass(frozen=True)
class ServeOptions:
    name: str
    model_uri: str
    namespace: str | None = None
    gpus: int = 1
    image: str = VLLM_IMAGE
    credentials_secret: str | None = None
    replicas: int = 1
    max_model_len: int | None = None
    service_account: str | None = None  # KServe: the ServiceAccount whose Secrets hold storage credentials


def _labels(opts: ServeOptions) -> dict[str, str]:
    return {"app.kubernetes.io/name": "vllm", "app.kubernetes.io/instance": opts.name,
            "app.kubernetes.io/managed-by": "refinery"}


def _meta(opts: ServeOptions) -> dict:
    meta = {"name": opts.name, "labels": _labels(opts)}
    if opts.namespace:
        meta["namespace"] = opts.namespace
    return meta


def _security() -> dict:
    return {"runAsNonRoot": True, "runAsUser": NON_ROOT_UID, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def _env_from(opts: ServeOptions) -> list[dict]:
    return [{"secretRef": {"name": opts.credentials_secret}}] if opts.credentials_secret else []


def model_source(opts: ServeOptions) -> tuple[str, list[dict], list[dict], list[dict]]:
    """(what vLLM's --model gets, init containers, volumes, vLLM's volume mounts)."""
    uri = opts.model_uri
    if uri.startswith("hf://"):
        return uri.removeprefix("hf://"), [], [], []
    if uri.startswith("s3://"):
        sync = {"name": "fetch-model", "image": AWS_CLI_IMAGE, "args": ["s3", "sync", uri, MODEL_MOUNT],
                "env": [{"name": "HOME", "value": "/tmp"}], "envFrom": _env_from(opts),
                "volumeMounts": [{"name": "model", "mountPath": MODEL_MOUNT}], "securityContext": _security()}
        return MODEL_MOUNT, [sync], [{"name": "model", "emptyDir": {}}], [{"name": "model", "mountPath": MODEL_MOUNT,
                                                                           "readOnly": True}]
    if uri.startswith("pvc://"):
        claim, _, path = uri.removeprefix("pvc://").partition("/")
        volume = {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        return f"{MODEL_MOUNT}/{path}".rstrip("/"), [], [volume], [{"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True}]
    raise ValueError(f"model URI {uri!r}: use s3://bucket/prefix, hf://org/name or pvc://claim/path")


def vllm_manifests(opts: ServeOptions) -> list[dict]:
    """A Deployment running vLLM's OpenAI-compatible server and a ClusterIP Service in front of it."""
    model, init, volumes, mounts = model_source(opts)
    args = ["--model", model, "--served-model-name", opts.name, "--port", str(PORT)]
    if opts.max_model_len:
        args += ["--max-model-len", str(opts.max_model_len)]
    limits = {"nvidia.com/gpu": str(opts.gpus)} if opts.gpus else {}
    probe = {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10}
    container = {
        "name": "vllm", "image": opts.image, "args": args,
        "ports": [{"name": "http", "containerPort": PORT}],
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "HF_HOME", "value": "/tmp/hf"}],
        "envFrom": _env_from(opts),
        "resources": {"limits": limits, "requests": dict(limits)},
        # Loading weights takes minutes on a big model: the startup probe waits up to 30 min.
        "startupProbe": {**probe, "failureThreshold": 180},
        "readinessProbe": probe,
        "livenessProbe": {**probe, "failureThreshold": 3},
        "volumeMounts": [*mounts, {"name": "tmp", "mountPath": "/tmp"}, {"name": "shm", "mountPath": "/dev/shm"}],
        "securityContext": _security(),
    }
    pod = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": NON_ROOT_UID, "fsGroup": NON_ROOT_UID},
        "automountServiceAccountToken": False,
        "initContainers": init,
        "containers": [container],
        "volumes": [*volumes, {"name": "tmp", "emptyDir": {}}, {"name": "shm", "emptyDir": {"medium": "Memory"}}],
    }
    if not init:
        del pod["initContainers"]
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(opts),
        "spec": {"replicas": opts.replicas, "selector": {"matchLabels": _labels(opts)},
                 "template": {"metadata": {"labels": _labels(opts)}, "spec": pod}},
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(opts),
        "spec": {"selector": _labels(opts), "ports": [{"name": "http", "port": PORT, "targetPort": "http"}]},
    }
    return [deployment, service]


def kserve_manifest(opts: ServeOptions) -> dict:
    """A KServe InferenceService (Hugging Face runtime, vLLM backend); KServe's storage
    initializer fetches `storageUri` (s3://, hf://, pvc://) itself."""
    limits = {"nvidia.com/gpu": str(opts.gpus)} if opts.gpus else {}
    model = {"modelFormat": {"name": "huggingface"}, "storageUri": opts.model_uri,
             "args": [f"--model_name={opts.name}"], "resources": {"limits": limits, "requests": dict(limits)}}
    predictor = {"model": model, "securityContext": {"runAsNonRoot": True, "runAsUser": NON_ROOT_UID}}
    if opts.service_account:  # KServe's storage initializer reads S3/HF credentials through it
        predictor["serviceAccountName"] = opts.service_account
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": _meta(opts),
            "spec": {"predictor": predictor}}
