"""A node lost mid-stage, and a node drained, on two real kubelets of one control plane.

The session's second node (conftest `second_node`: `REFINERY_NODE_PEERS=1`, no scheduler of its
own) is used; the first is cordoned so the stage's pod lands on the second, and once it has written a
checkpoint the second node is stopped as a reclaimed machine stops (`node down`: kubelet gone,
every container SIGKILLed; the Node object stays). Kubernetes alone would leave the pod Running,
then Terminating for ever; the operator ends the attempt as soon as the node is NotReady/Unknown
(disruptions.py) and attempt 2 runs on the first node. Then the first node is drained (`kubectl
drain --pod-selector`: the Eviction API, and a cordon), which is a disruption too; attempt 3
starts when the node is uncordoned. `retries.application` is 0: a misjudged disruption would fail
the pipeline. Printed: the seconds from the node stopping to attempt 2 Running."""

from __future__ import annotations

import copy
import subprocess
import time
from typing import Any

import yaml

from tests.tools import REPO

from .conftest import NODE, Cluster, SecondNode, hostpath_volume, wait_for

NAME = "lose"


def stage_status(cluster: Cluster) -> dict[str, Any]:
    pipeline = cluster.get("tp", NAME, "-n", NAME)
    return {**(pipeline.get("status", {}).get("stages") or [{}])[0], "pipeline": pipeline.get("status", {}).get("phase")}


def running_on(cluster: Cluster, attempt: int) -> str | None:
    """The node where attempt `attempt`'s trainer container runs, once it does."""
    for pod in cluster.get("pods", "-n", NAME, "-l", f"job-name={NAME}-pretrain-{attempt}")["items"]:
        statuses = pod["status"].get("containerStatuses") or [{}]
        if "running" in statuses[0].get("state", {}) and pod["status"].get("phase") == "Running":
            return pod["spec"]["nodeName"]
    return None


def test_a_lost_node_and_a_drained_one_are_disruptions_and_the_stage_resumes_elsewhere(
        cluster: Cluster, operator_release, second_node: SecondNode, tmp_path_factory):
    try:  # the second node is stopped here for good: this file runs after the multi-node tests
        lose_node_then_drain(cluster, second_node.name, second_node.folder, tmp_path_factory)
    finally:
        cluster.kubectl.run("uncordon", cluster.node_name, check=False)


def lose_node_then_drain(cluster: Cluster, node_b: str, second, tmp_path_factory) -> None:
    example = yaml.safe_load((REPO / "examples" / "tiny-chat.yaml").read_text())
    stage = copy.deepcopy(example["spec"]["stages"][0])
    stage["resources"] = {"gpus": 0}
    stage["training"].update(maxSteps=250, saveSteps=20, loggingSteps=10)
    stage["retries"] = {"application": 0, "infrastructure": 0, "disruption": 2}
    cluster.kubectl.run("create", "namespace", NAME)
    hostpath_volume(cluster, tmp_path_factory.mktemp("lose-volume"), NAME, f"{NAME}-workspace")
    cluster.kubectl.run("cordon", cluster.node_name)  # the stage's first pod goes to the second node
    cluster.kubectl.apply([{"apiVersion": "refinery.dev/v1alpha1", "kind": "TrainingPipeline",
                            "metadata": {"name": NAME, "namespace": NAME},
                            "spec": {"image": cluster.image("trainer-cpu"), "imagePullPolicy": "Never",
                                     "storage": {"claim": {"size": "1Gi"}}, "stages": [stage]}}])
    assert wait_for(lambda: running_on(cluster, 1), 300, "attempt 1 running") == node_b
    cluster.kubectl.run("uncordon", cluster.node_name)
    wait_for(lambda: (stage_status(cluster).get("lastCheckpoint") or {}).get("step", 0) >= 20, 300, "a checkpoint")

    # 1. The node is lost: its kubelet and containers die, its Node object stays.
    subprocess.run([NODE, "down", second], check=True, timeout=300)
    stopped = time.monotonic()
    at_loss = stage_status(cluster)["lastCheckpoint"]["step"]
    assert wait_for(lambda: running_on(cluster, 2), 240, "attempt 2 running") == cluster.node_name
    seconds = time.monotonic() - stopped
    lost = stage_status(cluster)
    failure = lost["lastFailure"]
    assert (failure["class"], failure["reason"], failure["node"]) == ("Disruption", "NodeLost", node_b), lost
    assert lost["restartsByClass"] == {"application": 0, "infrastructure": 0, "disruption": 1}, lost
    assert seconds < 120, f"{seconds:.0f} s from the node stopping to attempt 2 running"
    resumed = wait_for(lambda: (s := stage_status(cluster)).get("resumedFrom") and s, 120, "attempt 2 to resume")
    assert resumed["resumedFrom"]["step"] >= at_loss >= 20, resumed

    # 2. The remaining node is drained (Eviction API + cordon): attempt 3 waits for the uncordon.
    wait_for(lambda: stage_status(cluster).get("step", 0) > resumed["resumedFrom"]["step"] + 10, 300, "attempt 2 training")
    cluster.kubectl.run("drain", cluster.node_name, f"--pod-selector=refinery.dev/pipeline={NAME}",
                        "--delete-emptydir-data", "--ignore-daemonsets", "--timeout=180s", timeout=240)
    drained = wait_for(lambda: (s := stage_status(cluster)).get("attempt") == 3 and s, 120, "attempt 3")
    assert (drained["lastFailure"]["class"], drained["lastFailure"]["reason"]) == ("Disruption", "Evicted"), drained
    cluster.kubectl.run("uncordon", cluster.node_name)
    final = wait_for(lambda: (s := stage_status(cluster))["pipeline"] in ("Succeeded", "Failed") and s, 600, "the end")
    assert final["pipeline"] == "Succeeded" and final["attempt"] == 3, final
    assert final["restartsByClass"] == {"application": 0, "infrastructure": 0, "disruption": 2}, final
    events = cluster.events(NAME, NAME)
    assert any("AttemptDisrupted" in e and "NodeLost" in e and node_b in e for e in events), events
    print(f"\nnode lost ({node_b}, checkpoint at step {at_loss}): attempt 2 Running on {cluster.node_name} "
          f"{seconds:.1f} s after the node stopped, resumed from step {resumed['resumedFrom']['step']}; drained: "
          f"attempt 3 resumed from step {final['resumedFrom']['step']}; restarts {final['restartsByClass']}; events:",
          *events, sep="\n  ")
