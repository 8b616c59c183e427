"""The chart's ValidatingAdmissionPolicy on a real API server: a pipeline grants no more than its
author holds. Users are impersonated (kubectl `--as`, as an admin would try it) with Roles that
grant exactly what each attempt needs or lacks; the API server's own authorizer answers the
policy's CEL `authorizer` checks. The table printed at the end is the one the README shows.

The policy is rendered by the real helm from the chart, and its binding is narrowed to the test's
namespace so that tests sharing the control plane are not affected.
"""

from __future__ import annotations

import asyncio
import copy
import time

import pytest
import yaml

from .conftest import create_pipeline, wait_until
from .harness import helm_template
from .test_least_privilege import finished, two_stages

pytestmark = pytest.mark.timeout(240)
ALLOWED_REGISTRY = "ghcr.io/refinery-dev"


def role(name: str, namespace: str, rules: list[dict]) -> list[dict]:
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name, "namespace": namespace},
         "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name, "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name}]},
    ]


PIPELINES = {"apiGroups": ["refinery.dev"], "resources": ["trainingpipelines"], "verbs": ["create", "get", "update", "patch"]}
PODS = {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}
# alice: may create pipelines, nothing else. bob: and pods. carol: and the Secret `hub` and the
# ServiceAccount `trainer` (the narrow `use` grant). dave: bob's rights and impersonation of `trainer`.
USERS = {
    "alice": [PIPELINES],
    "bob": [PIPELINES, PODS],
    "carol": [PIPELINES, PODS,
              {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["hub"], "verbs": ["get"]},
              {"apiGroups": ["refinery.dev"], "resources": ["serviceaccounts"], "resourceNames": ["trainer"], "verbs": ["use"]}],
    "dave": [PIPELINES, PODS,  # may act as `trainer` on the API anyway
             {"apiGroups": [""], "resources": ["serviceaccounts"], "resourceNames": ["trainer"], "verbs": ["impersonate"]}],
}


def variant(base: dict, change: str) -> dict:
    m = copy.deepcopy(base)
    spec = m["spec"]
    secret_env = {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}}}
    if change == "env secretKeyRef":
        spec["env"] = [secret_env]
    elif change == "envFrom secretRef":
        spec["envFrom"] = [{"secretRef": {"name": "hub"}}]
    elif change == "secret volume":
        spec["volumes"] = [{"name": "creds", "secret": {"secretName": "hub"}}]
    elif change == "stage env secretKeyRef":
        spec["stages"][1]["env"] = [secret_env]
    elif change == "export credentialsSecret":
        spec["export"] = {"stage": "sft", "to": "s3://bucket/export/", "credentialsSecret": "hub"}
    elif change == "serviceAccountName":
        spec["serviceAccountName"] = "trainer"
    elif change == "nfs volume":
        spec["volumes"] = [{"name": "data", "nfs": {"server": "10.0.0.9", "path": "/exports"}}]
    elif change == "image from another registry":
        spec["image"] = "evil.example/miner:latest"
    elif change == "claim template":
        spec["storage"] = {"claim": {"size": "1Gi"}}
    elif change == "secret + serviceAccountName":
        spec["env"], spec["serviceAccountName"] = [secret_env], "trainer"
    elif change != "plain":
        raise ValueError(change)
    return m


# (user, what the pipeline adds, expected: None = admitted, else a text of the refusal)
ATTEMPTS = [
    ("alice", "plain", "missing permission: create pods"),
    ("bob", "plain", None),
    ("bob", "env secretKeyRef", "spec.env[HF_TOKEN] names Secret hub"),
    ("bob", "envFrom secretRef", "missing permission: get secrets/hub"),
    ("bob", "secret volume", "spec.volumes[creds].secret names Secret hub"),
    ("bob", "stage env secretKeyRef", "spec.stages[sft].env[HF_TOKEN] names Secret hub: bob may not read all of them"),
    ("bob", "export credentialsSecret", "spec.export.credentialsSecret names Secret hub"),
    ("bob", "serviceAccountName", "missing permission: use serviceaccounts.refinery.dev/trainer"),
    ("bob", "nfs volume", "spec.volumes[data]: nfs volumes are not allowed"),
    ("bob", "image from another registry", "is not from an allowed registry"),
    ("bob", "claim template", "missing permission: create persistentvolumeclaims"),
    ("carol", "secret + serviceAccountName", None),
    ("carol", "nfs volume", "nfs volumes are not allowed"),
    ("dave", "serviceAccountName", None),
    ("dave", "secret + serviceAccountName", "spec.env[HF_TOKEN] names Secret hub"),
]


@pytest.fixture()
def policy(helm_binary, kubectl, namespace, tmp_path):
    values = {"admissionPolicy": {"allowedRegistries": [ALLOWED_REGISTRY]}}
    objects = [o for o in helm_template(helm_binary, tmp_path, "rf-vap", values)
               if o["kind"].startswith("ValidatingAdmissionPolicy")]
    assert [o["kind"] for o in objects] == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    binding = objects[1]
    binding["metadata"]["name"] += f"-{namespace}"
    binding["spec"]["matchResources"] = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}
    objects[0]["metadata"]["name"] = binding["spec"]["policyName"] = f"{objects[0]['metadata']['name']}-{namespace}"
    for user, rules in USERS.items():
        kubectl.apply(role(user, namespace, rules))
    kubectl.apply(objects)
    yield objects
    kubectl.run("delete", "validatingadmissionpolicybinding", binding["metadata"]["name"], check=False)
    kubectl.run("delete", "validatingadmissionpolicy", objects[0]["metadata"]["name"], check=False)


def attempt(kubectl, user: str, manifest: dict, *extra: str):
    return kubectl.run("create", "--dry-run=server", f"--as={user}", "-f", "-", *extra, stdin=yaml.safe_dump(manifest), check=False)


def wait_active(kubectl, manifest: dict) -> None:
    """The API server compiles a new policy within moments: until alice is refused, it is not in force."""
    deadline = time.monotonic() + 30
    while attempt(kubectl, "alice", manifest).returncode == 0:
        assert time.monotonic() < deadline, "the policy never came into force"
        time.sleep(0.5)


def test_a_pipeline_grants_no_more_than_its_author_holds(kubectl, namespace, policy):
    base = two_stages("p", namespace)
    base["spec"]["image"] = f"{ALLOWED_REGISTRY}/refinery-trainer:0.1.0"
    wait_active(kubectl, base)
    table, wrong = [], []
    for user, change, refusal in ATTEMPTS:
        result = attempt(kubectl, user, variant(base, change))
        answer = "admitted" if result.returncode == 0 else result.stderr.strip().splitlines()[-1]
        table.append(f"| {user} | {change} | {answer} |")
        if (refusal is None) != (result.returncode == 0) or (refusal and refusal not in result.stderr):
            wrong.append((user, change, refusal, answer))
    print("\n| user | pipeline with | admission answered |\n|---|---|---|", *table, sep="\n")
    assert not wrong, wrong


def test_an_update_adding_a_secret_is_checked_too(kubectl, namespace, policy):
    base = two_stages("upd", namespace)
    base["spec"]["image"] = f"{ALLOWED_REGISTRY}/refinery-trainer:0.1.0"
    wait_active(kubectl, base)
    kubectl.run("create", "--as=bob", "-f", "-", stdin=yaml.safe_dump(base))
    patch = '{"spec": {"env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}}}]}}'
    refused = kubectl.run("patch", "tp", "upd", "-n", namespace, "--as=bob", "--type=merge", "-p", patch, check=False)
    assert refused.returncode != 0 and "missing permission: get secrets/hub" in refused.stderr, refused.stderr
    # Metadata-only updates (kopf's finalizer and annotations) are not re-checked: alice may not
    # create pods, yet nothing here implies one.
    kubectl.apply(role("alice-labels", namespace, [PIPELINES]))
    labelled = kubectl.run("label", "tp", "upd", "-n", namespace, "--as=bob", "team=ml", check=False)
    assert labelled.returncode == 0, labelled.stderr


async def test_the_operator_runs_an_admitted_pipeline_under_the_policy(admin, kubectl, namespace, node, policy, chart_operator):
    """kopf patches the pipeline's metadata (finalizer, annotations) as the operator's
    ServiceAccount, which may not create pods: the policy must let that through."""
    manifest = two_stages("run", namespace)
    manifest["spec"]["image"] = f"{ALLOWED_REGISTRY}/refinery-trainer:0.1.0"
    wait_active(kubectl, manifest)
    operator = chart_operator(namespace)
    operator.start()
    await asyncio.to_thread(operator.wait_live)
    assert kubectl.run("create", "--as=carol", "-f", "-", stdin=yaml.safe_dump(manifest), check=False).returncode == 0
    status = await wait_until(lambda: finished(admin, namespace, "run"), 120, "the pipeline to finish")
    assert status["phase"] == "Succeeded", operator.log_tail()
