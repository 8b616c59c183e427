"""The operator's ServiceAccount can act only where the chart says, on a real API server.

The chart's RBAC is rendered by the real helm in each mode and applied; then the API server's own
authorizer is asked (`kubectl auth can-i --as=system:serviceaccount:…`, a SubjectAccessReview)
what the operator may do inside and outside its namespaces. The `--list` answers printed at the
end are the effective permissions the README quotes.
"""

from __future__ import annotations

import asyncio

import pytest

from .conftest import create_pipeline, wait_until
from .harness import RELEASE_NAMESPACE, ChartRBAC, OperatorProcess, free_port
from .test_least_privilege import finished, refused_calls, two_stages

pytestmark = pytest.mark.timeout(180)

# What the operator does in a namespace it serves (tests/chart/test_rbac_matches_code.py: the code's calls).
DOES = [("create", "jobs.batch"), ("patch", "jobs.batch"), ("create", "configmaps"), ("list", "pods"),
        ("create", "serviceaccounts"), ("create", "rolebindings.rbac.authorization.k8s.io"),
        ("patch", "trainingpipelines.refinery.dev/status"), ("create", "persistentvolumeclaims")]
# What it never does anywhere.
NEVER = [("get", "secrets"), ("list", "secrets"), ("create", "pods"), ("delete", "configmaps"),
         ("update", "trainingpipelines.refinery.dev"), ("impersonate", "serviceaccounts"), ("escalate", "roles.rbac.authorization.k8s.io")]


def can(kubectl, who: str, verb: str, resource: str, namespace: str | None) -> bool:
    scope = ["-n", namespace] if namespace else ["--all-namespaces"]
    answer = kubectl.run("auth", "can-i", verb, resource, f"--as={who}", *scope, check=False).stdout.strip()
    return answer == "yes"


def effective(kubectl, who: str, namespace: str) -> str:
    """`kubectl auth can-i --list`, less what every authenticated user may (discovery, self-reviews)."""
    lines = kubectl.run("auth", "can-i", "--list", f"--as={who}", "-n", namespace).stdout.splitlines()
    return "\n".join(l.rstrip() for l in lines if l[:1].strip() and not l.startswith(("selfsubject", "Resources")))


@pytest.fixture()
def namespaces(kubectl, namespace):
    """(watched, also watched, outside)"""
    others = [f"{namespace}-b", f"{namespace}-out"]
    for name in others:
        kubectl.run("create", "namespace", name)
    yield namespace, *others
    for name in others:
        kubectl.run("delete", "namespace", name, "--wait=false", check=False)


def test_with_watch_namespaces_the_operator_cannot_act_outside_them(helm_binary, kubectl, namespaces, tmp_path):
    watched, also, outside = namespaces
    rbac = ChartRBAC.install(helm_binary, kubectl, tmp_path / "scope", f"scope-{watched}", values={"watchNamespaces": [watched, also]})
    who = f"system:serviceaccount:{RELEASE_NAMESPACE}:{rbac.service_account}"
    assert not [o for o in rbac.objects if o["kind"] == "ClusterRole" and any(
        set(r["resources"]) & {"jobs", "configmaps", "pods", "serviceaccounts", "roles", "rolebindings"} for r in o["rules"])]
    wrong = []
    for ns in (watched, also):
        wrong += [(ns, v, r) for v, r in DOES if not can(kubectl, who, v, r, ns)]
    wrong += [(outside, v, r) for v, r in DOES if can(kubectl, who, v, r, outside)]
    wrong += [("all namespaces", v, r) for v, r in DOES if can(kubectl, who, v, r, None)]
    wrong += [(ns, v, r) for ns in namespaces for v, r in NEVER if can(kubectl, who, v, r, ns)]
    assert not wrong, wrong
    print(f"\n# watchNamespaces=[{watched}, {also}]: in {watched}\n{effective(kubectl, who, watched)}"
          f"\n# outside ({outside})\n{effective(kubectl, who, outside)}")


def test_cluster_wide_the_operator_still_never_reads_secrets_or_creates_pods(helm_binary, kubectl, namespaces, tmp_path):
    watched, _, outside = namespaces
    rbac = ChartRBAC.install(helm_binary, kubectl, tmp_path / "all", f"scope-all-{watched}")
    who = f"system:serviceaccount:{RELEASE_NAMESPACE}:{rbac.service_account}"
    wrong = [(ns, v, r) for ns in (watched, outside) for v, r in DOES if not can(kubectl, who, v, r, ns)]
    wrong += [(ns, v, r) for ns in namespaces for v, r in NEVER if can(kubectl, who, v, r, ns)]
    assert not wrong, wrong
    print(f"\n# all namespaces (watchNamespaces=[]): in any namespace ({outside})\n{effective(kubectl, who, outside)}")


async def test_the_operator_serves_every_watched_namespace_with_roles_only(admin, admin_kubeconfig, helm_binary, kubectl, namespaces,
                                                                          node, tmp_path):
    """kopf watching two namespaces (no cluster-wide list or watch) under one Role each: a pipeline
    in the first completes, with no Forbidden in the operator's log. A release of its own, so no
    other test's ClusterRoleBinding lends this ServiceAccount more rights."""
    watched, also, _ = namespaces
    rbac = ChartRBAC.install(helm_binary, kubectl, tmp_path / "two", f"two-{watched}", values={"watchNamespaces": [watched, also]})
    command, env = rbac.operator_command(free_port())
    assert [a for a in command if a.startswith("--namespace")] == [f"--namespace={watched}", f"--namespace={also}"]
    operator = OperatorProcess(command, env, rbac.kubeconfig(admin_kubeconfig), tmp_path / "two-operator.log")
    operator.start()
    try:
        await asyncio.to_thread(operator.wait_live)
        await create_pipeline(admin, two_stages("p", watched))
        status = await wait_until(lambda: finished(admin, watched, "p"), 120, "the pipeline to finish")
        assert status["phase"] == "Succeeded", operator.log_tail()
        assert not refused_calls(operator.log_tail(2000)), operator.log_tail(400)
    finally:
        operator.stop()
