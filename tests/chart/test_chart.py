"""The Helm chart, with a real helm binary: lint, render, validate every object, schema, CRD drift."""

from __future__ import annotations

import re

import kubernetes_validate
import pytest
import yaml

from refinery.api.crd import render as render_crd
from tests.tools import REPO

from .conftest import ALL_FEATURES, CHART, NAMESPACE, find

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and a recent one that
# kubernetes-validate ships schemas for.
K8S_VERSIONS = ["1.29.0", "1.33.0"]
# Prometheus Operator kinds: kubernetes-validate has no schema for them (they are CRDs of another
# project). Their structure is checked by the tests below that read them (alerts, selectors).
NOT_IN_KUBERNETES = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
CASES = {"defaults": None, "all-features": ALL_FEATURES, "one-namespace": {"watchNamespace": "ml", **ALL_FEATURES}}


@pytest.mark.parametrize("case", CASES)
def test_helm_lint_strict(chart, case):
    result = chart.run("lint", "--strict", str(CHART), values=CASES[case])
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("case", CASES)
def test_every_rendered_object_is_valid_kubernetes(chart, case, version):
    objects = chart.template(CASES[case], "--kube-version", version)
    checked = []
    for obj in objects:
        if obj["kind"] in NOT_IN_KUBERNETES:
            continue
        kubernetes_validate.validate(obj, version, strict=True)  # raises ValidationError on any problem
        checked.append(obj["kind"])
    assert {"Deployment", "ServiceAccount", "Service", "CustomResourceDefinition"} <= set(checked)
    if case != "defaults":
        assert {"ConfigMap", "Pod"} <= set(checked)  # the dashboard and the helm test pod


def test_default_values_render_no_optional_feature(chart):
    kinds = sorted(o["kind"] for o in chart.template())
    assert kinds == sorted(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ClusterRole", "ClusterRoleBinding",
                            "Service", "Deployment", "CustomResourceDefinition", "Pod",  # Pod: the helm test
                            # Safe by default: the pipeline-author admission policy (tests/real/test_author_rights.py).
                            "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"])


def test_the_admission_policy_follows_its_values(chart):
    def policy(values=None, *extra):
        return [o for o in chart.template(values, *extra) if o["kind"].startswith("ValidatingAdmissionPolicy")]

    assert policy({"admissionPolicy": {"enabled": False}}) == []
    assert policy(None, "--kube-version", "1.29.0") == []  # no v1 ValidatingAdmissionPolicy before 1.30
    default = "\n".join(v["expression"] for v in policy()[0]["spec"]["validations"])
    assert "startsWith(r + '/')" not in default  # no registry allow-list: any image
    assert "!has(v.nfs)" in default and "!has(v.emptyDir)" not in default
    narrowed = policy({"admissionPolicy": {"allowedRegistries": ["ghcr.io/acme", "registry.corp"],
                                           "allowedVolumeTypes": ["persistentVolumeClaim"], "validationActions": ["Warn", "Audit"]}})
    rules = "\n".join(v["expression"] for v in narrowed[0]["spec"]["validations"])
    assert "['ghcr.io/acme','registry.corp'].exists(r, object.spec.image.startsWith(r + '/'))" in rules
    assert all(f"!has(v.{k})" in rules for k in ("secret", "configMap", "emptyDir", "nfs"))
    assert narrowed[1]["spec"]["validationActions"] == ["Warn", "Audit"]


def test_all_features_render_the_monitoring_objects(chart):
    objects = chart.template(ALL_FEATURES)
    monitor = find(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service = find(objects, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    find(objects, "PrometheusRule")
    dashboard = find(objects, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_pod_monitor_selects_the_stage_pods_the_operator_builds(chart):
    from refinery_operator import builders
    from refinery.core.plan import Launch
    from tests.builders import chat_pipeline

    pipeline = chat_pipeline("chat").obj()
    job = builders.build_stage_job(pipeline, Launch("pretrain", 1, None))
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    podmonitor = find(chart.template({"podMonitor": {"enabled": True}}), "PodMonitor")
    assert podmonitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert podmonitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_the_operator_pod_meets_the_restricted_pod_security_standard(chart):
    deployment = find(chart.template(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert sc["readOnlyRootFilesystem"] is True
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["port"] == "health"
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    # the stage pods would not be scraped by the operator's ServiceMonitor: different component
    assert deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"


def test_watching_one_namespace_narrows_rbac_to_a_role(chart):
    objects = chart.template({"watchNamespace": "ml"})
    role = find(objects, "Role")
    assert role["metadata"]["namespace"] == "ml"
    assert find(objects, "RoleBinding")["subjects"][0]["namespace"] == NAMESPACE
    args = find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=ml" in args and "--all-namespaces" not in args
    # the only cluster-wide rights left: reading CRDs, and one Node by name (is a stage pod's node lost?)
    cluster_roles = [o for o in objects if o["kind"] == "ClusterRole"]
    assert [(r["resources"], r["verbs"]) for c in cluster_roles for r in c["rules"]] == [
        (["customresourcedefinitions"], ["list", "watch"]), (["nodes"], ["get"])]


def test_watch_namespaces_makes_a_role_in_each(chart):
    objects = chart.template({"watchNamespaces": ["team-a", "team-b"], "watchNamespace": "team-a"})
    roles = [o for o in objects if o["kind"] == "Role"]
    bindings = [o for o in objects if o["kind"] == "RoleBinding"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]  # merged, no duplicate
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert all(b["roleRef"]["kind"] == "Role" for b in bindings)
    args = find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=team-a", "--namespace=team-b"]
    assert "--all-namespaces" not in args
    granted = {res for c in objects if c["kind"] == "ClusterRole" for r in c["rules"] for res in r["resources"]}
    assert granted == {"customresourcedefinitions", "nodes"}


def test_rbac_is_least_privilege(chart):
    role = find(chart.template(), "ClusterRole", "refinery")
    verbs = {(g, res): set(r["verbs"]) for r in role["rules"] for g in r["apiGroups"] for res in r["resources"]}
    assert verbs[("refinery.dev", "trainingpipelines/status")] == {"patch"}
    assert verbs[("batch", "jobs")] == {"create", "get", "list", "watch", "patch", "delete"}
    everything = set().union(*verbs.values())
    assert not everything & {"*", "deletecollection", "update", "escalate", "bind", "impersonate"}
    # delete only on Jobs (a Kueue-queued Job is suspended by deleting it): nothing else is ever deleted
    assert [key for key, v in verbs.items() if "delete" in v] == [("batch", "jobs")]
    assert not any(res == "*" or res == "secrets" or res == "pods/exec" for _, res in verbs)
    # the operator may grant the stage pods' Role (get/patch on configmaps) only if it holds it
    from refinery_operator import builders
    from tests.builders import chat_pipeline

    for rule in builders.build_progress_role(chat_pipeline("p").obj())["rules"]:
        for res in rule["resources"]:
            assert set(rule["verbs"]) <= verbs[("", res)]


def test_every_rbac_rule_says_why():
    text = (CHART / "templates" / "rbac.yaml").read_text().splitlines()
    for i, line in enumerate(text):
        if line.strip().startswith("- apiGroups:"):
            assert text[i - 1].strip().startswith("#"), f"rbac.yaml:{i + 1}: a rule without a comment saying why"


def test_the_chart_crd_is_the_generated_one(chart):
    generated = render_crd()
    chart_file = CHART / "files" / "trainingpipelines.refinery.dev.yaml"
    # a symbolic link to crds/: one generated file, which helm follows (and packages as a copy)
    assert chart_file.resolve() == (REPO / "crds" / "trainingpipelines.refinery.dev.yaml").resolve()
    assert chart_file.read_text() == generated, (
        "the chart's CRD differs from `refinery crd`: refinery crd -o crds/trainingpipelines.refinery.dev.yaml"
    )
    rendered = find(chart.template(), "CustomResourceDefinition")
    assert rendered["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert rendered["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    rendered["metadata"].pop("annotations"), rendered["metadata"].pop("labels")
    assert rendered == yaml.safe_load(generated)


def test_crds_can_be_left_to_someone_else(chart):
    objects = chart.template({"crds": {"install": False}})
    assert not [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    crd = find(chart.template({"crds": {"keep": False}}), "CustomResourceDefinition")
    assert "annotations" not in crd["metadata"]


@pytest.mark.parametrize(("values", "complaint"), [
    ({"replicaCount": 2}, "Additional property replicaCount is not allowed"),
    ({"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy"),
    ({"metrics": {"port": "eight thousand"}}, "metrics.port"),
    ({"serviceMonitor": {"enabled": True, "interval": "often"}}, "serviceMonitor.interval"),
    ({"prometheusRule": {"restartBudgetRatio": 2}}, "prometheusRule.restartBudgetRatio"),
    ({"dashboard": {"enabeld": True}}, "Additional property enabeld is not allowed"),
])
def test_the_schema_rejects_wrong_values(chart, values, complaint):
    result = chart.run("template", "r", str(CHART), values=values, check=False)
    assert result.returncode != 0
    assert complaint in result.stderr, result.stderr


def test_notes_render(chart, tmp_path):
    """NOTES.txt rendered through `tpl` in a copy of the chart: `helm install --dry-run` needs a cluster."""
    import shutil

    copy = tmp_path / "refinery"
    shutil.copytree(CHART, copy)
    (copy / "values.schema.json").unlink()  # the copy takes one more value: NOTES.txt's source
    (copy / "templates" / "notes-check.yaml").write_text("kind: Notes\nnotes: {{ tpl .Values.notesSource . | toJson }}\n")
    values = {**ALL_FEATURES, "notesSource": (CHART / "templates" / "NOTES.txt").read_text()}
    out = chart.run("template", "r", str(copy), "--show-only", "templates/notes-check.yaml", values=values).stdout
    notes = yaml.safe_load(out)["notes"]
    assert "kubectl get tp -w" in notes and "Alerts: on" in notes and "PodMonitor: on" in notes
    assert "{{" not in notes


def documented_paths(schema: dict, prefix: str = "") -> set[str]:
    """Value paths the schema declares one by one (not the contents of free-form Kubernetes objects)."""
    paths = set()
    if schema.get("additionalProperties") is False:
        for key, sub in schema.get("properties", {}).items():
            paths.add(prefix + key)
            paths |= documented_paths(sub, f"{prefix}{key}.")
    return paths


def test_every_values_key_has_a_comment():
    import json

    declared = documented_paths(json.loads((CHART / "values.schema.json").read_text()))
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    seen = set()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z_][\w]*):", line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        if path in declared:
            seen.add(path)
            assert lines[i - 1].strip().startswith("#"), f"values.yaml:{i + 1}: `{path}` has no comment"
    top_level = {p for p in declared if "." not in p}
    assert top_level <= seen, f"in the schema but not in values.yaml: {top_level - seen}"
