"""The operator's RBAC is exactly what its code calls: no more, no less.

The calls are read from the code itself (AST): every `cluster.<method>(RESOURCE, ...)` outside
k8s.py gives a verb on a resource (`list_labelled` -> list, `patch` -> patch, `delete` -> delete,
`create_if_absent` -> create + get for every kind it is given, `patch_status` -> patch on
trainingpipelines/status, `post_event` -> create events), and every kopf handler or index decorator
gives list + watch on its resource (plus patch on the pipeline resource, where kopf keeps its
annotations and finalizer, and create on events, which kopf posts). The kinds `create_if_absent`
receives are those the builders produce for a pipeline using every feature; they must be exactly
`k8s.BY_KIND` (less the pipeline). The verbs of the stage pods' Role are added (RBAC lets
the operator grant only what it holds). The rendered chart's namespaced rules must equal that set.
Also: the stage pods' Role is per pipeline, get/patch on its progress ConfigMaps by name only.
"""

from __future__ import annotations

import ast

from refinery_operator import builders, k8s
from refinery.api import v1alpha1
from refinery.api.v1alpha1 import PipelineStatus, TrainingPipeline
from refinery_operator.builders_retention import build_cleanup_job
from refinery.core.plan import Launch
from tests.builders import make_pipeline
from tests.tools import REPO

from .conftest import find

OPERATOR = REPO / "operator" / "refinery_operator"
METHOD_VERBS = {"list_labelled": {"list"}, "patch": {"patch"}, "delete": {"delete"}, "get": {"get"}}
EVENTS = ("", "events")
NODES = ("", "nodes")  # cluster-scoped: granted by the chart's second ClusterRole in both modes


def resource_key(resource: k8s.Resource) -> tuple[str, str]:
    return resource.group, resource.plural


def every_feature_pipeline():
    p = make_pipeline("p").storage(claim={"size": "1Gi", "accessModes": ["ReadWriteMany"]}).stage("pretrain", "pretrain") \
        .stage("sft", "sft", from_="pretrain", resources={"nodes": 2, "gpus": 0}).manifest()
    p["spec"]["checkpoints"] = {"keepLast": 1}
    p["metadata"]["uid"] = "u"
    return TrainingPipeline.model_validate(p)


def created_kinds() -> set[str]:
    pipeline = every_feature_pipeline()
    launch = Launch("sft", 1, None)
    objects = [*builders.build_pipeline_objects(pipeline), builders.build_stage_config(pipeline, launch),
               builders.build_stage_service(pipeline, launch), builders.build_stage_job(pipeline, launch),
               build_cleanup_job(pipeline, PipelineStatus(), "sft")]
    return {o["kind"] for o in objects if o is not None}


def calls_in_code() -> dict[tuple[str, str], set[str]]:
    needed: dict[tuple[str, str], set[str]] = {}

    def grant(key: tuple[str, str], *verbs: str) -> None:
        needed.setdefault(key, set()).update(verbs)

    names = {name: value for name, value in vars(k8s).items() if isinstance(value, k8s.Resource)}
    for path in OPERATOR.glob("*.py"):
        if path.name == "k8s.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "cluster":
                method = node.func.attr
                if method in METHOD_VERBS:
                    arg = node.args[0]
                    assert isinstance(arg, ast.Name) and arg.id in names, f"{path.name}:{node.lineno}: resource not a k8s constant"
                    grant(resource_key(names[arg.id]), *METHOD_VERBS[method])
                elif method == "create_if_absent":
                    for kind in created_kinds():
                        grant(resource_key(k8s.BY_KIND[kind]), "create", "get")
                elif method == "patch_status":
                    grant((k8s.PIPELINES.group, f"{k8s.PIPELINES.plural}/status"), "patch")
                elif method == "post_event":
                    grant(EVENTS, "create")
                elif method == "get_node":
                    grant(NODES, "get")
                elif method == "patch_pod_status":
                    grant((k8s.PODS.group, f"{k8s.PODS.plural}/status"), "patch")
            # kopf handlers and indexes: @kopf.on.event(GROUP, VERSION, PLURAL) / @kopf.index("batch", "v1", "jobs") ...
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and ast.unparse(node.func).startswith(("kopf.on.", "kopf.daemon", "kopf.index")) \
                    and len(node.args) >= 3:
                group, _, plural = (ast.literal_eval(a) if isinstance(a, ast.Constant) else getattr(v1alpha1, a.id)
                                    for a in node.args[:3])
                grant((group, plural), "list", "watch")
    grant(resource_key(k8s.PIPELINES), "patch")  # kopf: progress/diff-base annotations, finalizer
    grant(EVENTS, "create")  # kopf posts Events for handler failures
    # RBAC lets the operator grant (in each pipeline's Role) only what it holds itself.
    for rule in builders.build_progress_role(every_feature_pipeline())["rules"]:
        for resource in rule["resources"]:
            grant(("", resource), *rule["verbs"])
    return needed


def test_builders_create_exactly_the_kinds_k8s_knows():
    assert created_kinds() == set(k8s.BY_KIND) - {"TrainingPipeline"}


def granted_by(role) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def test_operator_rbac_is_exactly_what_the_code_calls(chart):
    needed = calls_in_code()
    cluster_scoped = {NODES: needed.pop(NODES)}
    assert granted_by(find(chart.template(), "ClusterRole", "refinery")) == needed
    for values in ({}, {"watchNamespace": "team"}):  # nodes are cluster-scoped whatever the mode
        extra = granted_by(find(chart.template(values), "ClusterRole", "refinery-crds"))
        assert {k: v for k, v in extra.items() if k == NODES} == cluster_scoped


def test_stage_pods_may_write_only_their_pipelines_progress_records():
    pipeline = every_feature_pipeline()
    (rule,) = builders.build_progress_role(pipeline)["rules"]
    assert rule == {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "patch"],
                    "resourceNames": ["p-pretrain-progress", "p-sft-progress", "p-init-sources"]}  # + the inputs check's result
    assert builders.build_service_account(pipeline)["automountServiceAccountToken"] is False
    job = builders.build_stage_job(pipeline, Launch("sft", 1, None))
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True  # the reporter needs it; nothing else mounts it
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert not any("secret" in v for v in pod["volumes"])  # no Secret volume, no secretKeyRef
    assert not any("secretKeyRef" in (e.get("valueFrom") or {}) for e in pod["containers"][0]["env"])
    cleanup = build_cleanup_job(pipeline, PipelineStatus(), "sft")
    assert cleanup["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
