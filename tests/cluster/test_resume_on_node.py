"""Stopping a stage the ways a cluster stops it, with a real container runtime delivering the
signal: `spec.suspend` (the job controller deletes the pod; the kubelet sends SIGTERM and waits
`terminationGracePeriodSeconds`) and `kubectl delete pod`. Each time the trainer saves a checkpoint
on SIGTERM — between its `saveSteps` boundaries, so no scheduled save can pass for it — and the
stage resumes from that step. One `pretrain` stage of examples/tiny-chat.yaml, `gpus: 0`.

Suspend keeps the attempt (the same Job resumes). A deleted pod fails its Job (exit 143, no
DisruptionTarget condition: the operator saw the deletion on the pod, core/disruption.py) and an
eviction through the Eviction API (DisruptionTarget) fails the next one: each is a *disruption*,
retried at once from the SIGTERM checkpoint without spending `retries.application`, which is 0
here, so one misjudged disruption would fail the pipeline."""

from __future__ import annotations

import copy
import json
from typing import Any

import yaml

from tests.tools import REPO

from .conftest import Cluster, hostpath_volume, wait_for

NAME = "resume"
SAVE_STEPS = 1000  # beyond maxSteps: every checkpoint before the end is one SIGTERM made


def stage_status(cluster: Cluster) -> dict[str, Any]:
    pipeline = cluster.get("tp", NAME, "-n", NAME)
    return {**(pipeline.get("status", {}).get("stages") or [{}])[0], "pipeline": pipeline.get("status", {}).get("phase")}


def set_suspend(cluster: Cluster, value: bool) -> None:
    cluster.kubectl.run("patch", "tp", NAME, "-n", NAME, "--type=merge", "-p", json.dumps({"spec": {"suspend": value}}))


def running_pod(cluster: Cluster, attempt: int = 1) -> str | None:
    for pod in cluster.get("pods", "-n", NAME, "-l", f"job-name={NAME}-pretrain-{attempt}")["items"]:
        statuses = pod["status"].get("containerStatuses") or [{}]
        if "running" in statuses[0].get("state", {}) and not pod["metadata"].get("deletionTimestamp"):
            return pod["metadata"]["name"]
    return None


def evict(cluster: Cluster, namespace: str, pod: str) -> None:
    """What `kubectl drain` does for each pod: a policy/v1 Eviction (the pod gets DisruptionTarget)."""
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": namespace}}
    cluster.kubectl.run("create", "--raw", f"/api/v1/namespaces/{namespace}/pods/{pod}/eviction", "-f", "-",
                        stdin=json.dumps(eviction))


def test_suspend_pod_deletion_and_eviction_save_a_checkpoint_on_sigterm_and_resume_from_it(
        cluster: Cluster, operator_release, tmp_path_factory):
    example = yaml.safe_load((REPO / "examples" / "tiny-chat.yaml").read_text())
    stage = copy.deepcopy(example["spec"]["stages"][0])
    stage["resources"] = {"gpus": 0}
    stage["training"].update(maxSteps=300, saveSteps=SAVE_STEPS, loggingSteps=10)
    stage["retries"] = {"application": 0, "infrastructure": 0, "disruption": 2}
    cluster.kubectl.run("create", "namespace", NAME)
    hostpath_volume(cluster, tmp_path_factory.mktemp("resume-volume"), NAME, f"{NAME}-workspace")
    cluster.kubectl.apply([{"apiVersion": "refinery.dev/v1alpha1", "kind": "TrainingPipeline",
                            "metadata": {"name": NAME, "namespace": NAME},
                            "spec": {"image": cluster.image("trainer-cpu"), "imagePullPolicy": "Never",
                                     "storage": {"claim": {"size": "1Gi"}}, "stages": [stage]}}])

    # 1. Suspended mid-training: SIGTERM through containerd and runc, a checkpoint, the pod gone.
    wait_for(lambda: stage_status(cluster).get("step", 0) >= 40, 300, "training to pass step 40")
    set_suspend(cluster, True)
    suspended = wait_for(lambda: (s := stage_status(cluster)).get("phase") == "Suspended" and s, 120, "Suspended")
    first = suspended["lastCheckpoint"]["step"]
    assert 40 <= first < SAVE_STEPS, suspended
    assert not cluster.get("pods", "-n", NAME, "-l", f"job-name={NAME}-pretrain-1")["items"]

    # 2. Resumed: the same Job's new pod starts from that checkpoint.
    set_suspend(cluster, False)
    resumed = wait_for(lambda: (s := stage_status(cluster)).get("step", 0) > first + 20 and s, 300, "training to go on")
    assert resumed["resumedFrom"]["step"] == first and resumed["attempt"] == 1, resumed

    # 3. `kubectl delete pod`: SIGTERM again, a second checkpoint, attempt 2 resumes from it.
    pod = wait_for(lambda: running_pod(cluster), 60, "the running pod")
    cluster.kubectl.run("delete", "pod", "-n", NAME, pod, "--wait=true", timeout=180)
    # resumedFrom changes when attempt 2 reports: until then it is attempt 1's (from `first`).
    deleted = wait_for(lambda: (s := stage_status(cluster)).get("attempt") == 2 and (s.get("resumedFrom") or {}).get("step", 0)
                       > first and s.get("step", 0) > s["resumedFrom"]["step"] + 20 and s, 300, "attempt 2 to train on")
    second = deleted["resumedFrom"]["step"]
    assert first + 20 < second < SAVE_STEPS, deleted
    assert (deleted["lastFailure"]["class"], deleted["lastFailure"]["reason"]) == ("Disruption", "PodDeleted"), deleted

    # 4. Evicted through the Eviction API (as `kubectl drain` does): DisruptionTarget, SIGTERM, attempt 3.
    evict(cluster, NAME, wait_for(lambda: running_pod(cluster, 2), 60, "attempt 2's pod"))
    final = wait_for(lambda: (s := stage_status(cluster))["pipeline"] in ("Succeeded", "Failed") and s, 900, "the end")
    assert final["pipeline"] == "Succeeded" and final["phase"] == "Succeeded", final
    third = final["resumedFrom"]["step"]
    assert second < third < SAVE_STEPS and final["attempt"] == 3, final
    assert (final["lastFailure"]["class"], final["lastFailure"]["reason"]) == ("Disruption", "Evicted"), final
    assert final["restartsByClass"] == {"application": 0, "infrastructure": 0, "disruption": 2}, final
    events = cluster.events(NAME, NAME)
    assert sum("AttemptDisrupted" in e for e in events) == 2 and not any("AttemptFailed" in e for e in events), events
    print(f"\nsuspend: checkpoint at step {first} on SIGTERM, resumed from it (attempt 1, no budget); "
          f"kubectl delete pod: checkpoint at step {second}, attempt 2 resumed from it; Eviction API: checkpoint at "
          f"step {third}, attempt 3 resumed from it; restarts {final['restartsByClass']}; events:", *events, sep="\n  ")
