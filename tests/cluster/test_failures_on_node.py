"""Failures as the kubelet and the container runtime report them, not as a test node writes them:
a stage over its cgroup memory limit is OOMKilled by the kernel, and an image that is not on the
node never starts. Each pipeline is one small `pretrain` stage of examples/tiny-chat.yaml with
`gpus: 0` (what a CPU-only cluster runs), in a namespace of its own."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from tests.tools import REPO

from .conftest import Cluster, hostpath_volume, wait_for


def one_stage_pipeline(cluster: Cluster, name: str, **resources: Any) -> dict[str, Any]:
    example = yaml.safe_load((REPO / "examples" / "tiny-chat.yaml").read_text())
    stage = copy.deepcopy(example["spec"]["stages"][0])
    stage["resources"] = {"gpus": 0, **resources}
    return {"apiVersion": "refinery.dev/v1alpha1", "kind": "TrainingPipeline",
            "metadata": {"name": name, "namespace": name},
            "spec": {"image": cluster.image("trainer-cpu"), "imagePullPolicy": "Never",
                     "storage": {"claim": {"size": "1Gi"}}, "stages": [stage]}}


def run_until_failed(cluster: Cluster, manifest: dict[str, Any], volume, timeout: float) -> dict[str, Any]:
    name = manifest["metadata"]["name"]
    cluster.kubectl.run("create", "namespace", name)
    hostpath_volume(cluster, volume, name, f"{name}-workspace")
    cluster.kubectl.apply([manifest])

    def failed():
        pipeline = cluster.get("tp", name, "-n", name)
        return pipeline if pipeline.get("status", {}).get("phase") in ("Failed", "Succeeded") else None

    return wait_for(failed, timeout, f"{name} to fail", interval=2)


def test_a_stage_over_its_memory_limit_is_oomkilled_and_retried_as_an_infrastructure_failure(
        cluster: Cluster, operator_release, tmp_path_factory):
    """128Mi is less than Python needs to import torch: the kernel kills the trainer (exit 137,
    reason OOMKilled in the container status), the Job's podFailurePolicy fails it at once, and the
    operator spends the infrastructure budget (1 here) on a second attempt, which dies the same way."""
    manifest = one_stage_pipeline(cluster, "oom", memory="128Mi")
    manifest["spec"]["stages"][0]["retries"] = {"infrastructure": 1, "application": 0, "backoffSeconds": 0}
    pipeline = run_until_failed(cluster, manifest, tmp_path_factory.mktemp("oom-volume"), 300)
    [stage] = pipeline["status"]["stages"]
    assert pipeline["status"]["phase"] == "Failed", pipeline["status"]
    assert stage["lastFailure"]["class"] == "Infrastructure" and stage["lastFailure"]["reason"] == "OOMKilled", stage
    assert stage["restartsByClass"] == {"application": 0, "infrastructure": 1, "disruption": 0} and stage["attempt"] == 2, stage
    pods = cluster.get("pods", "-n", "oom")["items"]
    killed = [p["status"]["containerStatuses"][0]["state"]["terminated"] for p in pods
              if p["metadata"]["labels"].get("job-name", "").startswith("oom-pretrain-")]
    assert [(t["reason"], t["exitCode"]) for t in killed] == [("OOMKilled", 137)] * 2, killed
    # `gpus: 0` on a CPU-only cluster: no nvidia.com/gpu asked for, only what the stage sets.
    resources = next(p for p in pods if p["metadata"]["name"].startswith("oom-pretrain-"))["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"memory": "128Mi"}, "limits": {"memory": "128Mi"}}, resources
    print("\nOOM: lastFailure", stage["lastFailure"], "\nevents:", *cluster.events("oom", "oom"), sep="\n  ")


def test_an_image_missing_from_the_node_fails_the_pipeline_as_start_timeout_not_a_hang(
        cluster: Cluster, operator_release, tmp_path_factory):
    """`imagePullPolicy: Never` and no such image: the kubelet leaves the first pod of the pipeline
    (its initializer, same image) waiting with ErrImageNeverPull. Found here: the operator waited
    on it for ever (the process kubelet has no image to miss). It now fails the pipeline as
    StartTimeout after the stages' `startTimeoutSeconds` (core/sources.py)."""
    manifest = one_stage_pipeline(cluster, "noimage")
    manifest["spec"]["image"] = "localhost/refinery-trainer-cpu:not-loaded"
    manifest["spec"]["stages"][0]["retries"] = {"infrastructure": 0, "startTimeoutSeconds": 20}
    pipeline = run_until_failed(cluster, manifest, tmp_path_factory.mktemp("noimage-volume"), 180)
    assert pipeline["status"]["phase"] == "Failed", pipeline["status"]
    failed = next(c for c in pipeline["status"]["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "StartTimeout", failed
    [pod] = cluster.get("pods", "-n", "noimage")["items"]
    waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "ErrImageNeverPull", waiting  # what the kubelet said, and `kubectl describe` shows
    assert pipeline["status"]["stages"][0]["phase"] == "Pending"  # nothing trained
    print("\nmissing image:", failed["message"], "\nkubelet:", waiting, "\nevents:",
          *cluster.events("noimage", "noimage"), *cluster.events("noimage", pod["metadata"]["name"]), sep="\n  ")
