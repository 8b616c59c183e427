"""examples/tiny-chat.yaml on the real node: every stage (the sources initializer, pretrain, sft,
reward, rlhf, eval, export) a container of the CPU trainer image, run by the kubelet as uid 1000
with the stage pod's securityContext, its claim bound to a hostPath PersistentVolume.

The namespace enforces the Pod Security Standard `restricted` (as a platform team hands namespaces
to ML teams): every pod of the example must be admitted under it. This test also holds what the
operator's objects and status must say of the example (Jobs, owners, GPUs, volume, outputs,
lineage, the eval gate and the export): the same run through kmock's emulator, a copy of these
checks, was retired to keep CI inside its budget.

The manifest is the example as it ships, with two fields set as a user of a registry-less
cluster (kind, minikube) would set them: `image` (the trainer-cpu build loaded onto the node) and
`imagePullPolicy: Never`. Its stages ask for `gpus: 1`, so their pods request `nvidia.com/gpu: 1`:
the test first sees the scheduler refuse them on this GPU-less node ("Insufficient
nvidia.com/gpu"), then advertises one `nvidia.com/gpu` in the node's status (a patch of
`status.capacity`, as Kubernetes documents for extended resources; no device plugin, no device) —
the stages then run on the node's CPU, as the trainer does wherever CUDA is absent.

Prints per-stage pod start-up (PodScheduled -> container started, whole seconds as the kubelet
reports them) and container run times, and the printer columns as they moved. With
REFINERY_COMPARE_LOCAL=1 it also runs the same pipeline in local mode (`refinery run`, ~4 more
minutes on 2 cores) and prints its stage times beside them; CI leaves it off for time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from tests.tools import REPO

from .conftest import Cluster, hostpath_volume, wait_for

NAMESPACE = PIPELINE = "tiny-chat"
CLAIM = f"{PIPELINE}-workspace"  # builders.claim_name of a `storage.claim` template
RUN_TIMEOUT_S = 1500
STAGES = ["pretrain", "sft", "reward", "rlhf", "eval", "export"]
REFINERY = str(Path(sys.executable).with_name("refinery"))  # the console script of this environment
# The CRD's printer columns STAGE, PHASE, PROGRESS and CKPT-STEP (their jsonPaths), as `kubectl get tp` shows them.
COLUMNS = "{.status.currentStage} {.status.phase} {.status.progress} {.status.checkpointStep}"


def seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def example_manifest(cluster: Cluster) -> dict[str, Any]:
    manifest = yaml.safe_load((REPO / "examples" / "tiny-chat.yaml").read_text())
    manifest["metadata"]["namespace"] = NAMESPACE
    manifest["spec"].update(image=cluster.image("trainer-cpu"), imagePullPolicy="Never")
    return manifest


def unschedulable_for_gpu(cluster: Cluster) -> str | None:
    for pod in cluster.get("pods", "-n", NAMESPACE, "-l", "job-name=tiny-chat-pretrain-1")["items"]:
        for condition in pod["status"].get("conditions", []):
            if condition["type"] == "PodScheduled" and condition.get("reason") == "Unschedulable":
                return condition["message"]
    return None


def advertise_gpu(cluster: Cluster) -> None:
    """One `nvidia.com/gpu` in the node's capacity: a claim about the node, not a device."""
    patch = [{"op": "add", "path": f"/status/{field}/nvidia.com~1gpu", "value": "1"} for field in ("capacity", "allocatable")]
    cluster.kubectl.run("patch", "node", cluster.node_name, "--subresource=status", "--type=json", "-p", json.dumps(patch))


def pod_timings(pod: dict[str, Any]) -> dict[str, float]:
    scheduled = next(c["lastTransitionTime"] for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    return {"startup_s": seconds(scheduled, terminated["startedAt"]),
            "run_s": seconds(terminated["startedAt"], terminated["finishedAt"])}


def local_stage_seconds(workdir: Path) -> dict[str, float]:
    """The same pipeline in local mode: each stage's start to completion, from its status.json."""
    subprocess.run([REFINERY, "run", str(REPO / "examples" / "tiny-chat.yaml"),
                    "--workdir", str(workdir), "--quiet", "--metrics-port", "0"],
                   check=True, capture_output=True, timeout=RUN_TIMEOUT_S)
    status = json.loads((workdir / PIPELINE / "status.json").read_text())
    return {s["name"]: seconds(s["startTime"], s["completionTime"]) for s in status["stages"]}


def test_tiny_chat_succeeds_with_every_stage_a_container_on_the_node(cluster: Cluster, operator_release, tmp_path_factory):
    volume = tmp_path_factory.mktemp("tiny-chat-volume")
    cluster.kubectl.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": {
        f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}}}])
    hostpath_volume(cluster, volume, NAMESPACE, CLAIM)
    cluster.kubectl.apply([example_manifest(cluster)])

    # No GPU on the node: the first training stage's pod asks for one and is not scheduled.
    refusal = wait_for(lambda: unschedulable_for_gpu(cluster), 180, "the pretrain pod to be refused for its GPU")
    assert "Insufficient nvidia.com/gpu" in refusal, refusal
    advertise_gpu(cluster)

    pods: dict[str, dict[str, Any]] = {}  # every pod seen, its last state (Jobs of done stages may go)
    columns: list[str] = []

    def finished() -> dict[str, Any] | None:
        for pod in cluster.get("pods", "-n", NAMESPACE)["items"]:
            pods[pod["metadata"]["name"]] = pod
        row = cluster.kubectl.run("get", "tp", PIPELINE, "-n", NAMESPACE, "-o", f"jsonpath={COLUMNS}").stdout.strip()
        if not columns or columns[-1] != row:
            columns.append(row)
        pipeline = cluster.get("tp", PIPELINE, "-n", NAMESPACE)
        return pipeline if pipeline.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

    started = time.monotonic()
    pipeline = wait_for(finished, RUN_TIMEOUT_S, "tiny-chat to finish", interval=2)
    cluster_seconds = time.monotonic() - started
    stages = {s["name"]: s for s in pipeline["status"]["stages"]}
    assert pipeline["status"]["phase"] == "Succeeded", (
        json.dumps(pipeline["status"], indent=1)[-4000:] + "\n" + "\n".join(cluster.events(NAMESPACE, PIPELINE)))
    assert [s for s in STAGES if stages[s]["phase"] != "Succeeded"] == []

    # Every stage, and the sources initializer, was a container of the trainer image on the node.
    by_job = {p["metadata"]["labels"]["job-name"]: p for p in pods.values() if p["status"]["phase"] == "Succeeded"}
    expected_jobs = {f"{PIPELINE}-sources-1-fetch"} | {stages[s]["jobName"] for s in STAGES}
    assert expected_jobs <= set(by_job), (expected_jobs - set(by_job), sorted(by_job))
    for job in expected_jobs:
        pod = by_job[job]
        assert pod["spec"]["nodeName"] == cluster.node_name
        [container] = pod["status"]["containerStatuses"]
        assert container["image"].endswith(cluster.image("trainer-cpu").split("/", 1)[1])
        assert container["state"]["terminated"]["exitCode"] == 0
    for stage in ("pretrain", "sft", "reward", "rlhf"):
        assert by_job[stages[stage]["jobName"]]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"

    # The Jobs: one per stage and the sources initializer, named deterministically, owned by the
    # pipeline (garbage-collected with it), the workspace claim mounted; GPUs only where training.
    uid = pipeline["metadata"]["uid"]
    jobs = {j["metadata"]["name"]: j for j in cluster.get("jobs", "-n", NAMESPACE)["items"]}
    assert set(jobs) == {f"{PIPELINE}-{s}-1" for s in STAGES} | {f"{PIPELINE}-sources-1-fetch"}, sorted(jobs)
    for name, job in jobs.items():
        [owner] = job["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("TrainingPipeline", PIPELINE, uid, True)
        template = job["spec"]["template"]["spec"]
        gpus = (template["containers"][0].get("resources") or {}).get("limits", {}).get("nvidia.com/gpu")
        assert gpus == (None if name in (f"{PIPELINE}-export-1", f"{PIPELINE}-sources-1-fetch") else "1"), name
        assert {"name": "workspace", "persistentVolumeClaim": {"claimName": CLAIM}} in template["volumes"], name

    # The trainer wrote as the pod's user, and what it reported reached the status.
    stage_folder = volume / NAMESPACE / PIPELINE / "pretrain"
    assert stage_folder.stat().st_uid == 1000
    assert stages["pretrain"]["checkpoints"] >= 1 and stages["pretrain"]["lastCheckpoint"]["step"] == 150
    assert stages["rlhf"]["metrics"]["meanReward"] > stages["rlhf"]["metrics"]["baselineMeanReward"]
    assert any(row.split()[2] == "2/6" for row in columns), columns  # PROGRESS moved while it ran
    for name in ("pretrain", "sft", "reward", "rlhf"):
        stage = stages[name]
        assert stage["progress"] == 1.0 and stage["lastCheckpoint"]["step"] > 0 and stage["metrics"], stage
        assert stage["output"] == f"/workspace/{NAMESPACE}/{PIPELINE}/{name}/model", stage["output"]
        assert (volume / NAMESPACE / PIPELINE / name / "model" / "config.json").is_file(), name
    assert stages["rlhf"]["inputs"] == {"model": stages["sft"]["output"], "rewardModel": stages["reward"]["output"]}
    # The eval stage scored sft and rlhf, its gate held, and the export wrote the rlhf model.
    assert stages["eval"]["metrics"]["rlhf.exactMatch"] >= stages["eval"]["metrics"]["sft.exactMatch"]
    assert "`rlhf`" in (volume / "exports" / PIPELINE / "README.md").read_text()

    # The exported model loads and answers what the example teaches (its stages trained on plain
    # prompts: a bare model folder does not say so, hence --template plain).
    exported = volume / "exports" / PIPELINE
    answer = subprocess.run([REFINERY, "chat", str(exported), "--template", "plain",
                             "--prompt", "What does the sleepy cow say?"], capture_output=True, text=True, timeout=300)
    assert answer.returncode == 0 and "moo" in answer.stdout, (answer.stdout, answer.stderr[-2000:])

    compare = os.environ.get("REFINERY_COMPARE_LOCAL") == "1"
    local = local_stage_seconds(tmp_path_factory.mktemp("tiny-chat-local")) if compare else {}
    print(f"\ntiny-chat on the node: {cluster_seconds:.0f} s from the GPU advertised to Succeeded")
    print(f"{'JOB':34} {'START-UP s':>10} {'RUN s':>7} {'STATUS s':>9} {'LOCAL s':>8}")
    for job in sorted(expected_jobs, key=lambda j: by_job[j]["metadata"]["creationTimestamp"]):
        name = next((s for s in STAGES if stages[s]["jobName"] == job), "initializer")
        timing = pod_timings(by_job[job])
        status_s = seconds(stages[name]["startTime"], stages[name]["completionTime"]) if name in stages else float("nan")
        print(f"{job:34} {timing['startup_s']:>10.0f} {timing['run_s']:>7.0f} {status_s:>9.0f} {local.get(name, float('nan')):>8.0f}")
    print("printer columns (STAGE PHASE PROGRESS CKPT-STEP) as they moved:\n  " + "\n  ".join(columns))
    print("answer of the exported model:", answer.stdout.strip()[-200:])
