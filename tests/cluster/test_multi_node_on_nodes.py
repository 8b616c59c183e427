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
  Eviction API). Rank 0's SIGTERM is every rank's stop (the trainer's distributed.any_rank), so
  both save a checkpoint at the same step; attempt 2 cannot place its two ranks on one node, so it
  waits; the node is uncordoned and the stage resumes from that checkpoint;
- while reward trains, `spec.suspend: true` (dpo, which needs only sft, is suspended beside it):
  the Job controller deletes both pods, both ranks get SIGTERM and save one checkpoint together
  (each its own rng_state_<rank>.pth in it); the stage says Suspended with no budget spent, and on
  resume the same attempt goes on from that step;
- while dpo trains, the node of one of its ranks is lost (`node down` of the second node: its
  kubelet and containers killed, its Node object left; the first node holds the cluster's only
  scheduler and the operator, so it is the second that goes). The attempt ends as `NodeLost`
  naming the node once Kubernetes marks it unreachable — so does any stage running a rank there
  beside it (reward, or rlhf after it: the node takes all its pods); the next attempt waits, Pending, for a
  second node; the node is started again (`node up` on its folder: same name, images kept) and
  attempt 2 runs on both nodes from the newest checkpoint. Printed: seconds from the node stopping
  to the attempt ended, and from the node's restart to attempt 2 Running.

At the same time a second pipeline asks for `nodes: 3` on the two nodes: its third rank can never
schedule (one rank per node), so the attempt ends as `StartTimeout` after its
`startTimeoutSeconds` with the scheduler's reason ("0/2 nodes are available: ..."), and with
`retries.infrastructure: 0` the pipeline fails saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from tests.tools import REPO

from .conftest import NODE, NODE_OPTIONS, Cluster, SecondNode, hostpath_volume, wait_for

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
    # reward: long enough to be suspended mid-training (only its SIGTERM checkpoint); dpo: a checkpoint before its node is lost
    steps = {"pretrain": (60, 20), "sft": (40, 1000), "reward": (40, 1000), "rlhf": (6, 1000), "dpo": (30, 10)}
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


def all_ranks_running(cluster: Cluster, job: str, ranks: int = 2) -> bool:
    return all(rank_pod(cluster, job, str(i)) for i in range(ranks))


def stages_on(cluster: Cluster, node: str) -> set[tuple[str, int]]:
    """(stage, attempt) of every running stage pod on `node`."""
    found = set()
    for pod in cluster.get("pods", "-n", NAME, "--field-selector", f"spec.nodeName={node}")["items"]:
        labels = pod["metadata"].get("labels", {})
        if pod["status"].get("phase") == "Running" and "refinery.dev/stage" in labels:
            found.add((labels["refinery.dev/stage"], int(labels["refinery.dev/attempt"])))
    return found


def set_suspend(cluster: Cluster, value: bool) -> None:
    cluster.kubectl.run("patch", "tp", NAME, "-n", NAME, "--type=merge", "-p", json.dumps({"spec": {"suspend": value}}))


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
    at_delete = max([before, *(r["step"] for r in logged(volume, "pretrain", 1))])  # the last logged step
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
    assert "Unschedulable: 0/2 nodes are available" in stuck_failure["message"], stuck_failure  # the scheduler's words

    # 3. sft's rank 0's node is drained (cordon + Eviction API), then uncordoned.
    def sft_training():
        placements(cluster, seen)
        training = [r for r in logged(volume, "sft", 1) if r.get("loss") is not None]  # past the step-0 evaluation
        return training and rank_pod(cluster, f"{NAME}-sft-1", "0")
    wait_for(sft_training, 600, "sft to train on two nodes")
    drained_node = seen[f"{NAME}-sft-1"]["0"]
    cluster.kubectl.run("drain", drained_node, f"--pod-selector=refinery.dev/pipeline={NAME}", "--delete-emptydir-data",
                        "--ignore-daemonsets", "--timeout=180s", timeout=240)
    try:
        drained = wait_for(lambda: (s := status(cluster, NAME)["sft"]).get("attempt") == 2 and s, 120, "sft attempt 2")
    finally:
        cluster.kubectl.run("uncordon", drained_node)
    assert (drained["lastFailure"]["class"], drained["lastFailure"]["reason"]) == ("Disruption", "Evicted"), drained

    # 4. reward suspended mid-training: both ranks SIGTERMed, one checkpoint saved together, no budget spent.
    def reward_training():
        placements(cluster, seen)
        return [r for r in logged(volume, "reward", 1) if r.get("loss") is not None and r["step"] >= 10]
    wait_for(reward_training, 600, "reward to train past step 10 on two nodes", interval=0.5)
    set_suspend(cluster, True)
    suspend_at = time.monotonic()
    suspended = wait_for(lambda: (s := status(cluster, NAME)["reward"]).get("phase") == "Suspended" and s, 180,
                         "reward Suspended")
    suspend_seconds = time.monotonic() - suspend_at
    suspend_step = suspended["lastCheckpoint"]["step"]
    saved = Path(suspended["lastCheckpoint"]["path"].replace("/workspace", str(volume), 1))
    assert 10 <= suspend_step < 40 and suspended["attempt"] == 1, suspended
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in saved.iterdir()}, sorted(saved.iterdir())
    assert suspended["restartsByClass"] == {"application": 0, "infrastructure": 0, "disruption": 0}, suspended
    assert status(cluster, NAME)["phase"] == "Suspended"
    assert not cluster.get("pods", "-n", NAME, "-l", f"job-name={NAME}-reward-1")["items"]
    set_suspend(cluster, False)
    resumed_reward = wait_for(lambda: (s := status(cluster, NAME)["reward"]).get("resumedFrom") and s, 300,
                              "reward to resume")
    assert resumed_reward["resumedFrom"]["step"] == suspend_step and resumed_reward["attempt"] == 1, resumed_reward

    # 5. dpo's node lost: the second node stops (the first has the scheduler and the operator) after a checkpoint.
    def dpo_checkpointed():
        placements(cluster, seen)
        return ((status(cluster, NAME).get("dpo") or {}).get("lastCheckpoint") or {}).get("step", 0) >= 10 \
            and all_ranks_running(cluster, f"{NAME}-dpo-1")
    wait_for(dpo_checkpointed, 900, "dpo's first checkpoint on two nodes")
    placements(cluster, seen)
    lost_rank = next(i for i, node in seen[f"{NAME}-dpo-1"].items() if node == second_node.name)
    hit = stages_on(cluster, second_node.name)  # dpo's rank, and reward's or rlhf's when one runs beside it
    subprocess.run([NODE, "down", second_node.folder], check=True, timeout=300)
    stopped = time.monotonic()
    at_loss = status(cluster, NAME)["dpo"]["lastCheckpoint"]["step"]
    lost = wait_for(lambda: ((s := status(cluster, NAME)["dpo"]).get("lastFailure") or {}).get("attempt") == 1 and s,
                    240, "dpo's attempt 1 to end")
    ended_seconds = time.monotonic() - stopped
    for stage, attempt in hit - {("dpo", 1)}:  # ended too, unless its rank there had just finished
        wait_for(lambda: ((s := status(cluster, NAME)[stage]).get("lastFailure") or {}).get("attempt") == attempt
                 or s.get("phase") == "Succeeded", 120, f"{stage}'s attempt {attempt} to end")
    assert (lost["lastFailure"]["class"], lost["lastFailure"]["reason"], lost["lastFailure"]["node"]) == \
        ("Disruption", "NodeLost", second_node.name), lost
    assert lost["restartsByClass"] == {"application": 0, "infrastructure": 0, "disruption": 1}, lost
    assert ended_seconds < 120, f"{ended_seconds:.0f} s from the node stopping to the attempt ended"
    pending = wait_for(lambda: (s := status(cluster, NAME)["dpo"]).get("attempt") == 2 and s, 120, "dpo attempt 2")
    assert not all_ranks_running(cluster, f"{NAME}-dpo-2"), pending  # one node left: a 2-rank attempt cannot run
    restarted = time.monotonic()
    subprocess.run([NODE, "up", second_node.folder, cluster.plane_dir], stdout=subprocess.DEVNULL, check=True,
                   timeout=300, env={**os.environ, **NODE_OPTIONS, "REFINERY_NODE_SCHEDULER": "0"})
    wait_for(lambda: placements(cluster, seen) or all_ranks_running(cluster, f"{NAME}-dpo-2"), 240,
             "dpo attempt 2 running on both nodes")
    back_seconds, total_seconds = time.monotonic() - restarted, time.monotonic() - stopped
    assert back_seconds < 120, f"{back_seconds:.0f} s from the node's restart to attempt 2 running"

    # 6. The pipeline goes on, every stage on both nodes, to Succeeded.
    def ended():
        placements(cluster, seen)
        return (s := status(cluster, NAME))["phase"] in ("Succeeded", "Failed") and s
    final = wait_for(ended, 1200, "the multi-node pipeline to end", interval=2)
    assert final["phase"] == "Succeeded", final
    # rank 1's SIGTERM stops both ranks: a checkpoint at the step they were at (after step 20's scheduled one)
    resumed = final["pretrain"]["resumedFrom"]["step"]
    assert 20 <= resumed < 60, final["pretrain"]
    assert 0 < final["sft"]["resumedFrom"]["step"] < 40, final["sft"]  # the drained rank 0's SIGTERM checkpoint
    assert final["dpo"]["resumedFrom"]["step"] >= at_loss >= 10, final["dpo"]
    # The lost node ended every attempt with a rank on it: dpo's, and reward's or rlhf's if one ran there.
    node_lost = {stage for stage in STAGES if (final[stage].get("lastFailure") or {}).get("reason") == "NodeLost"}
    assert "dpo" in node_lost and node_lost <= {stage for stage, _ in hit}, (node_lost, hit)
    for stage in node_lost:
        assert (final[stage]["lastFailure"]["class"], final[stage]["lastFailure"]["node"], final[stage]["attempt"]) == \
            ("Disruption", second_node.name, 2), final[stage]
    if final["reward"]["attempt"] == 1:  # the suspension's checkpoint was the last it resumed from
        assert final["reward"]["resumedFrom"]["step"] == suspend_step, final["reward"]
    for stage in STAGES:
        attempts = final[stage]["attempt"]
        assert attempts == (2 if stage in ("pretrain", "sft") or stage in node_lost else 1), final[stage]
        assert final[stage]["restartsByClass"]["application"] == 0, final[stage]
        nodes = seen.get(f"{NAME}-{stage}-{attempts}", {})
        assert set(nodes) == {"0", "1"} and nodes["0"] != nodes["1"], (stage, seen)
        assert {nodes["0"], nodes["1"]} == {cluster.node_name, second_node.name}, (stage, seen)
        curve = losses(volume, stage, attempts)
        if stage != "rlhf":  # rloo's loss is a policy-gradient surrogate, not a quantity that must fall
            assert len(curve) >= 3 and sum(curve[-2:]) / 2 < sum(curve[:2]) / 2, (stage, curve)
    events = cluster.events(NAME, NAME)
    assert sum("AttemptDisrupted" in e for e in events) == 2 + len(node_lost), events
    assert not any("AttemptFailed" in e for e in events), events
    assert any("AttemptDisrupted" in e and "NodeLost" in e and second_node.name in e for e in events), events
    assert any("Suspended" in e for e in events) and any("Resumed" in e for e in events), events
    print(f"\nrank 1 of pretrain deleted (last logged step {at_delete}): attempt 2 (both ranks, new Job) logged step "
          f"{first['step']} {first['time'] - deleted:.1f} s later, resumed from step {resumed}; "
          f"lastFailure {failure['reason']}: {failure['message']}")
    print(f"sft's rank 0 node {drained_node} drained: {drained['lastFailure']['message']}; sft resumed from step "
          f"{(final['sft'].get('resumedFrom') or {}).get('step', 0)}")
    print(f"nodes: 3 on two nodes: {stuck_failure['reason']}: {stuck_failure['message']}")
    # The README's figure lines (tests/unit/test_readme_multinode.py checks their shape and arithmetic).
    print(f"**Suspended, `nodes: 2` (reward):** Suspended {suspend_seconds:.1f} s after spec.suspend, one checkpoint "
          f"at step {suspend_step} from both ranks, restarts {suspended['restartsByClass']}, resumed (attempt 1) from "
          f"step {resumed_reward['resumedFrom']['step']}")
    print(f"**Node lost, `nodes: 2` (dpo):** rank {lost_rank}'s node stopped after a checkpoint at step {at_loss}: "
          f"attempt 1 ended {ended_seconds:.1f} s after the node stopped, attempt 2 Running on both nodes "
          f"{back_seconds:.1f} s after the node's restart ({total_seconds:.1f} s after the loss), resumed from step "
          f"{final['dpo']['resumedFrom']['step']}; restarts {final['dpo']['restartsByClass']}; NodeLost beside it: "
          f"{', '.join(sorted(node_lost - {'dpo'})) or 'none'}")
    print(f"dpo lastFailure: {lost['lastFailure']}")
    print("events:", *events, sep="\n  ")
    for stage in STAGES:
        attempt = final[stage]["attempt"]
        curve = losses(volume, stage, attempt)
        print(f"{stage}: ranks on {seen[f'{NAME}-{stage}-{attempt}']}, loss {curve[0]:.3f} -> {curve[-1]:.3f}")
