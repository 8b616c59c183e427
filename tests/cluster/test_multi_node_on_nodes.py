"""Multi-node stages on two real nodes: pod networking, cluster DNS, one rank per node.

Every stage type that trains under torchrun with `nodes > 1` — pretrain, sft, reward, rlhf (rloo)
and dpo (eval runs in one process; rlhf's ppo refuses several processes) — runs with `nodes: 2`
as a 2-pod Indexed Job on the session's two nodes (conftest: both with `REFINERY_NODE_DNS=1
REFINERY_NODE_PEERS=1`). torchrun finds rank 0 by `<job>-0.<service>` through the cluster DNS and
the ranks train over gloo on pod-to-pod TCP across the two node bridges; each Job's two pods must
sit on different nodes, and each stage's logged loss must fall.

Folded into the same pipeline, to save CI time, two disruptions (`retries.application: 0`:
blaming the user would fail the pipeline):
- while pretrain's attempt 1 trains, rank 1's pod is deleted. Rank 0's collective then fails (its
  own exit says TrainerError); the operator judges the attempt as a whole — a Disruption — and
  attempt 2 resumes from the newest checkpoint on both nodes. Printed: seconds from the deletion
  to attempt 2 training (its first metrics.jsonl line) and the steps lost;
- while sft trains, the node of its rank 0 is drained (`kubectl drain`: a cordon, then the
  Eviction API). Attempt 2 cannot place its two ranks on one node, so it waits; the node is
  uncordoned and the stage goes on.

At the same time a second pipeline asks for `nodes: 3` on the two nodes: its third rank can never
schedule (one rank per node), so the attempt ends as `StartTimeout` after its
`startTimeoutSeconds`, and with `retries.infrastructure: 0` the pipeline fails saying so.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from tests.tools import REPO

from .conftest import Cluster, SecondNode, hostpath_volume, wait_for

NAME, STUCK = "multi", "stuck"
STAGES = ["pretrain", "sft", "reward", "rlhf", "dpo"]
RETRIES = {"application": 0, "infrastructure": 0, "disruption": 2}
NODES = {"gpus": 0, "nodes": 2}
START_TIMEOUT_S = 45


def stages() -> list[dict[str, Any]]:
    """tiny-chat's training stages and tiny-dpo's dpo, each at nodes: 2 and a few steps."""
    chat = {s["name"]: s for s in yaml.safe_load((REPO / "examples" / "tiny-chat.yaml").read_text())["spec"]["stages"]}
    dpo = next(s for s in yaml.safe_load((REPO / "examples" / "tiny-dpo.yaml").read_text())["spec"]["stages"]
               if s["type"] == "dpo")
    steps = {"pretrain": (60, 20), "sft": (40, 1000), "reward": (20, 1000), "rlhf": (6, 1000), "dpo": (15, 1000)}
    result = []
    for name in STAGES:
        stage = dict(dpo if name == "dpo" else chat[name])
        stage.pop("gate", None)
        max_steps, save_steps = steps[name]
        stage["training"] = {**stage["training"], "maxSteps": max_steps, "saveSteps": save_steps, "loggingSteps": 5}
        stage.update(resources=dict(NODES), retries=dict(RETRIES))
        result.append(stage)
    return result


def manifest(cluster: Cluster, name: str, stage_list: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "refinery.dev/v1alpha1", "kind": "TrainingPipeline",
            "metadata": {"name": name, "namespace": name},
            "spec": {"image": cluster.image("trainer-cpu"), "imagePullPolicy": "Never",
                     "storage": {"claim": {"size": "1Gi", "accessModes": ["ReadWriteMany"]}}, "stages": stage_list}}


def status(cluster: Cluster, name: str) -> dict[str, Any]:
    pipeline = cluster.get("tp", name, "-n", name).get("status", {})
    return {"phase": pipeline.get("phase"), **{s["name"]: s for s in pipeline.get("stages") or []}}


def placements(cluster: Cluster, seen: dict[str, dict[str, str]]) -> None:
    """Record, per Job, which node each index's pod was scheduled to (pods are gone after the Job)."""
    for pod in cluster.get("pods", "-n", NAME)["items"]:
        job = pod["metadata"].get("labels", {}).get("job-name")
        index = pod["metadata"].get("annotations", {}).get("batch.kubernetes.io/job-completion-index")
        if job and index is not None and pod["spec"].get("nodeName"):
            seen.setdefault(job, {})[index] = pod["spec"]["nodeName"]


def rank_pod(cluster: Cluster, job: str, index: str) -> str | None:
    for pod in cluster.get("pods", "-n", NAME, "-l", f"job-name={job}")["items"]:
        running = "running" in ((pod["status"].get("containerStatuses") or [{}])[0].get("state") or {})
        if running and pod["metadata"]["annotations"].get("batch.kubernetes.io/job-completion-index") == index:
            return pod["metadata"]["name"]
    return None


def logged(volume: Path, stage: str, attempt: int) -> list[dict[str, Any]]:
    path = volume / NAME / NAME / stage / f"attempt-{attempt}" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def losses(volume: Path, stage: str, attempts: int) -> list[float]:
    """The stage's logged training losses, attempts merged in step order (the newer attempt wins)."""
    by_step = {row["step"]: row["loss"] for a in range(1, attempts + 1) for row in logged(volume, stage, a)
               if row.get("loss") is not None}
    return [by_step[s] for s in sorted(by_step)]


def test_every_training_stage_type_runs_on_two_nodes_and_a_lost_rank_is_a_disruption(
        cluster: Cluster, operator_release, second_node: SecondNode, tmp_path_factory):
    volume = tmp_path_factory.mktemp("multi-volume")
    for name, folder in ((NAME, volume), (STUCK, tmp_path_factory.mktemp("stuck-volume"))):
        cluster.kubectl.run("create", "namespace", name)
        hostpath_volume(cluster, folder, name, f"{name}-workspace", access_modes=("ReadWriteMany",))
    stuck = {**stages()[0], "resources": {"gpus": 0, "nodes": 3},
             "retries": {**RETRIES, "startTimeoutSeconds": START_TIMEOUT_S}}
    cluster.kubectl.apply([manifest(cluster, NAME, stages()), manifest(cluster, STUCK, [stuck])])
    seen: dict[str, dict[str, str]] = {}

    # 1. Rank 1 of pretrain's attempt 1 is deleted after a checkpoint: a disruption, not the user's fault.
    def checkpointed():
        placements(cluster, seen)
        return ((status(cluster, NAME).get("pretrain") or {}).get("lastCheckpoint") or {}).get("step", 0) >= 20
    wait_for(checkpointed, 420, "pretrain's first checkpoint on two nodes")
    pod = wait_for(lambda: rank_pod(cluster, f"{NAME}-pretrain-1", "1"), 60, "rank 1's pod")
    before = max((r["step"] for r in logged(volume, "pretrain", 1)), default=0)
    cluster.kubectl.run("delete", "pod", "-n", NAME, pod, "--wait=false")
    deleted = time.time()

    def attempt_2_training():
        placements(cluster, seen)
        return [r for r in logged(volume, "pretrain", 2) if r.get("loss") is not None]  # not its step-0 evaluation
    first = wait_for(attempt_2_training, 300, "pretrain attempt 2 to log a training step")[0]
    at_delete = max([before, *(r["step"] for r in logged(volume, "pretrain", 1))])
    pretrain = status(cluster, NAME)["pretrain"]
    failure = pretrain["lastFailure"]
    assert (failure["class"], failure["reason"]) in {("Disruption", "PodDeleted"), ("Disruption", "Terminated")}, pretrain
    assert pretrain["restartsByClass"] == {"application": 0, "infrastructure": 0, "disruption": 1}, pretrain

    # 2. Meanwhile `nodes: 3` on two nodes: rank 2 stays Pending, the attempt ends as StartTimeout.
    stuck_end = wait_for(lambda: (s := status(cluster, STUCK))["phase"] in ("Failed", "Succeeded") and s,
                         START_TIMEOUT_S + 240, "the 3-node pipeline to end")
    stuck_failure = stuck_end["pretrain"]["lastFailure"]
    assert stuck_end["phase"] == "Failed" and stuck_failure["reason"] == "StartTimeout", stuck_end
    assert "not all 3 pods" in stuck_failure["message"], stuck_failure

    # 3. sft's rank 0's node is drained (cordon + Eviction API), then uncordoned.
    def sft_training():
        placements(cluster, seen)
        return logged(volume, "sft", 1) and rank_pod(cluster, f"{NAME}-sft-1", "0")
    wait_for(sft_training, 600, "sft to train on two nodes")
    drained_node = seen[f"{NAME}-sft-1"]["0"]
    cluster.kubectl.run("drain", drained_node, f"--pod-selector=refinery.dev/pipeline={NAME}", "--delete-emptydir-data",
                        "--ignore-daemonsets", "--timeout=180s", timeout=240)
    try:
        drained = wait_for(lambda: (s := status(cluster, NAME)["sft"]).get("attempt") == 2 and s, 120, "sft attempt 2")
    finally:
        cluster.kubectl.run("uncordon", drained_node)
    assert (drained["lastFailure"]["class"], drained["lastFailure"]["reason"]) == ("Disruption", "Evicted"), drained

    # 4. The pipeline goes on, every stage on both nodes, to Succeeded.
    def ended():
        placements(cluster, seen)
        return (s := status(cluster, NAME))["phase"] in ("Succeeded", "Failed") and s
    final = wait_for(ended, 1200, "the multi-node pipeline to end", interval=2)
    assert final["phase"] == "Succeeded", final
    resumed = final["pretrain"]["resumedFrom"]["step"]
    assert 20 <= resumed <= at_delete, final["pretrain"]
    for stage in STAGES:
        attempts = final[stage]["attempt"]
        assert attempts == (2 if stage in ("pretrain", "sft") else 1), final[stage]
        assert final[stage]["restartsByClass"]["application"] == 0, final[stage]
        nodes = seen.get(f"{NAME}-{stage}-{attempts}", {})
        assert set(nodes) == {"0", "1"} and nodes["0"] != nodes["1"], (stage, seen)
        assert {nodes["0"], nodes["1"]} == {cluster.node_name, second_node.name}, (stage, seen)
        curve = losses(volume, stage, attempts)
        if stage != "rlhf":  # rloo's loss is a policy-gradient surrogate, not a quantity that must fall
            assert len(curve) >= 3 and sum(curve[-2:]) / 2 < sum(curve[:2]) / 2, (stage, curve)
    events = cluster.events(NAME, NAME)
    assert sum("AttemptDisrupted" in e for e in events) == 2 and not any("AttemptFailed" in e for e in events), events
    print(f"\nrank 1 of pretrain deleted at step ~{at_delete}: attempt 2 (both ranks, new Job) logged step "
          f"{first['step']} {first['time'] - deleted:.1f} s later, resumed from step {resumed} "
          f"({at_delete - resumed} steps lost); lastFailure {failure['reason']}: {failure['message']}")
    print(f"sft's rank 0 node {drained_node} drained: {drained['lastFailure']['message']}; sft resumed from step "
          f"{(final['sft'].get('resumedFrom') or {}).get('step', 0)}")
    print(f"nodes: 3 on two nodes: {stuck_failure['reason']}: {stuck_failure['message']}")
    print("events:", *events, sep="\n  ")
    for stage in STAGES:
        attempt = final[stage]["attempt"]
        curve = losses(volume, stage, attempt)
        print(f"{stage}: ranks on {seen[f'{NAME}-{stage}-{attempt}']}, loss {curve[0]:.3f} -> {curve[-1]:.3f}")
