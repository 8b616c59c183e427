"""The objects the operator creates, checked field by field (no API involved)."""

from __future__ import annotations

import pytest
import yaml

from refinery_operator import builders
from refinery.api.run import StageRun
from refinery.api.v1alpha1 import StageInputs
from refinery.core.plan import Launch
from tests.builders import chat_pipeline, make_pipeline

UID = "0f5c2a4e-1111-2222-3333-444455556666"


def pipeline(builder=None):
    p = (builder or chat_pipeline("chat")).obj()
    return p.model_copy(update={"metadata": p.metadata.model_copy(update={"uid": UID})})


def job(p=None, stage="sft", attempt=2):
    return builders.build_stage_job(p or pipeline(), Launch(stage, attempt, StageInputs(model="/workspace/m")))


def container(j):
    return j["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(("path", "expected"), [
    (("apiVersion",), "batch/v1"),
    (("kind",), "Job"),
    (("metadata", "name"), "chat-sft-2"),
    (("metadata", "namespace"), "default"),
    (("spec", "backoffLimit"), 0),
    (("spec", "completions"), 1),
    (("spec", "parallelism"), 1),
    (("spec", "template", "spec", "restartPolicy"), "Never"),
    (("spec", "template", "spec", "serviceAccountName"), "chat-stage"),
    (("spec", "template", "spec", "securityContext", "runAsNonRoot"), True),
    (("spec", "template", "spec", "securityContext", "seccompProfile"), {"type": "RuntimeDefault"}),
    (("spec", "template", "spec", "containers", 0, "image"), "ghcr.io/refinery-dev/refinery-trainer:0.1.0"),
    (("spec", "template", "spec", "containers", 0, "imagePullPolicy"), "IfNotPresent"),
    (("spec", "template", "spec", "containers", 0, "command"), ["refinery-train", "run", "--config", "/etc/refinery/stage.yaml"]),
    (("spec", "template", "spec", "containers", 0, "terminationMessagePolicy"), "FallbackToLogsOnError"),
    (("spec", "template", "spec", "containers", 0, "securityContext"), {
        "runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}}),
    (("spec", "template", "spec", "containers", 0, "resources"), {
        "requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}),
])
def test_stage_job_fields(path, expected):
    value = job()
    for key in path:
        value = value[key]
    assert value == expected


def test_stage_job_labels_and_owner():
    j = job()
    labels = {
        "app.kubernetes.io/name": "refinery", "app.kubernetes.io/instance": "chat",
        "app.kubernetes.io/component": "stage", "app.kubernetes.io/managed-by": "refinery-operator",
        "refinery.dev/pipeline": "chat", "refinery.dev/stage": "sft", "refinery.dev/attempt": "2",
    }
    assert j["metadata"]["labels"] == labels
    assert j["spec"]["template"]["metadata"]["labels"] == labels
    assert j["metadata"]["ownerReferences"] == [{
        "apiVersion": "refinery.dev/v1alpha1", "kind": "TrainingPipeline", "name": "chat", "uid": UID,
        "controller": True, "blockOwnerDeletion": True,
    }]


def test_stage_job_mounts_the_workspace_and_the_stage_config():
    j = job()
    volumes = {v["name"]: v for v in j["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m for m in container(j)["volumeMounts"]}
    assert volumes["workspace"]["persistentVolumeClaim"] == {"claimName": "training-data"}
    assert mounts["workspace"]["mountPath"] == "/workspace"
    assert volumes["stage-config"]["configMap"] == {"name": "chat-sft-2-config"}
    assert mounts["stage-config"] == {"name": "stage-config", "mountPath": "/etc/refinery", "readOnly": True}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"


def test_stage_job_env_names_the_attempt():
    assert container(job())["ports"] == [{"name": "metrics", "containerPort": 9400, "protocol": "TCP"}]
    env = {e["name"]: e for e in container(job())["env"]}
    assert env["REFINERY_PIPELINE"]["value"] == "chat"
    assert env["REFINERY_STAGE"]["value"] == "sft"
    assert env["REFINERY_ATTEMPT"]["value"] == "2"
    assert env["REFINERY_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


@pytest.mark.parametrize(("resources", "expected"), [
    ({"gpus": 0}, {}),
    ({"gpus": 0, "cpu": "4", "memory": "16Gi"}, {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"cpu": "4", "memory": "16Gi"}}),
    ({"gpus": 8, "memory": "1Ti"}, {"requests": {"memory": "1Ti", "nvidia.com/gpu": "8"}, "limits": {"memory": "1Ti", "nvidia.com/gpu": "8"}}),
])
def test_resources(resources, expected):
    p = pipeline(make_pipeline("p").stage("pt", "pretrain", resources=resources))
    assert container(job(p, "pt", 1))["resources"] == expected


def test_node_selector_and_tolerations():
    resources = {"nodeSelector": {"gpu": "a100"}, "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]}
    p = pipeline(make_pipeline("p").stage("pt", "pretrain", resources=resources))
    spec = job(p, "pt", 1)["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"gpu": "a100"}
    assert spec["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "nodeSelector" not in job()["spec"]["template"]["spec"]


def test_pod_failure_policy_names_infrastructure_failures():
    rules = job()["spec"]["podFailurePolicy"]["rules"]
    assert [r["action"] for r in rules] == ["FailJob", "FailJob"]
    assert rules[0]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    assert rules[1]["onExitCodes"]["values"] == [137]
    # Rule i means POD_FAILURE_RULES[i]; the initializer Job adds one more (builders_sources.py).
    assert builders.POD_FAILURE_RULES[: len(rules)] == [("Disruption", "Disrupted"), ("Infrastructure", "OOMKilled")]


def test_long_names_stay_dns_labels():
    name = "a" * 60
    p = pipeline(make_pipeline(name).stage("s" * 40, "pretrain"))
    j = job(p, "s" * 40, 12)
    assert len(j["metadata"]["name"]) <= 63
    assert j["metadata"]["name"] == job(p, "s" * 40, 12)["metadata"]["name"]  # deterministic


def test_stage_config_holds_the_stage_run():
    p = pipeline()
    cm = builders.build_stage_config(p, Launch("sft", 2, StageInputs(model="/workspace/default/chat/pretrain/model")))
    assert cm["metadata"]["name"] == "chat-sft-2-config"
    run = StageRun.model_validate(yaml.safe_load(cm["data"]["stage.yaml"]))
    assert run.stage == p.spec.stage("sft")
    assert run.attempt == 2
    assert run.stage_dir == "/workspace/default/chat/sft"
    assert run.data_root == "/workspace"
    assert run.init_model == "/workspace/default/chat/pretrain/model"
    assert run.reporter.kind == "configmap" and run.reporter.name == "chat-sft-progress"
    assert run.image == p.spec.image  # the trackers' lineage: the image the stage ran in


def test_progress_configmap_starts_empty():
    cm = builders.build_progress_configmap(pipeline(), "sft")
    assert cm["metadata"]["name"] == "chat-sft-progress"
    assert cm["data"] == {"progress.json": ""}
    assert cm["metadata"]["labels"]["app.kubernetes.io/component"] == "progress"
    assert cm["metadata"]["ownerReferences"][0]["uid"] == UID


def test_rbac_lets_stage_pods_patch_only_their_progress():
    p = pipeline()
    role = builders.build_progress_role(p)
    assert role["rules"] == [{
        "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "patch"],
        "resourceNames": ["chat-pretrain-progress", "chat-sft-progress", "chat-reward-progress", "chat-rlhf-progress",
                          "chat-init-sources"],  # the initializer's result (every pipeline has inputs to check)
    }]
    binding = builders.build_progress_role_binding(p)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "chat-stage"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "chat-stage", "namespace": "default"}]
    assert builders.build_service_account(p)["metadata"]["name"] == "chat-stage"


def test_own_service_account_is_bound_not_created():
    p = pipeline(chat_pipeline("chat"))
    p = p.model_copy(update={"spec": p.spec.model_copy(update={"service_account_name": "trainers"})})
    assert builders.build_service_account(p) is None
    assert builders.build_progress_role_binding(p)["subjects"][0]["name"] == "trainers"
    assert job(p)["spec"]["template"]["spec"]["serviceAccountName"] == "trainers"


@pytest.mark.parametrize(("storage", "claim"), [
    ({"claimName": "data"}, None),
    ({"claim": {"size": "500Gi"}}, {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "500Gi"}}}),
    ({"claim": {"size": "1Ti", "storageClassName": "fast", "accessModes": ["ReadWriteMany"]}},
     {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Ti"}}, "storageClassName": "fast"}),
])
def test_workspace_claim(storage, claim):
    p = pipeline(make_pipeline("p").stage("pt", "pretrain").storage(**storage))
    pvc = builders.build_workspace_claim(p)
    assert (pvc and pvc["spec"]) == claim
    expected_name = storage.get("claimName", "p-workspace")
    assert job(p, "pt", 1)["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == expected_name
