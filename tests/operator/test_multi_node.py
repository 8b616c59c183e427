"""Multi-node stages: the Indexed Job, its headless Service and the torchrun command, field by field;
then a 2-node stage trained for real under torchrun (gloo, CPU) through the operator and the test
kubelet, which runs the Job's two indexes as two local processes.

How the pod DNS name reaches 127.0.0.1 in the kubelet: the builders give rank 0's address as
`<job>-0.<service>` in the command; the kubelet (kubelet.py `map_hosts`) rewrites every pod DNS
name of an Indexed Job with a `subdomain` to 127.0.0.1 in the command and env it starts — the
part a headless Service plays in a cluster — so `refinery-train launch` and torchrun resolve it.
The rendezvous port is a free one (`MASTER_PORT` patched for the in-process operator): four
engineers' tests share this host.
"""

from __future__ import annotations

import socket
import time

import pytest
import yaml

from refinery_operator import builders, builders_distributed
from refinery.api.run import StageRun
from refinery.api.v1alpha1 import StageInputs
from refinery.core.plan import Launch
from tests.builders import make_pipeline
from tests.tools import REPO

from .conftest import create_pipeline, stored, stored_all, wait_for

UID = "0f5c2a4e-1111-2222-3333-444455556666"
RUN = ["run", "--config", "/etc/refinery/stage.yaml"]


def pipeline(nodes: int, gpus: int, **extra):
    p = make_pipeline("mn").stage("pretrain", "pretrain").stage(
        "sft", "sft", from_="pretrain", resources={"nodes": nodes, "gpus": gpus}, **extra).obj()
    return p.model_copy(update={"metadata": p.metadata.model_copy(update={"uid": UID})})


def launch(attempt: int = 3) -> Launch:
    return Launch("sft", attempt, StageInputs(model="/workspace/default/mn/pretrain/model"))


def at(obj, *path):
    for key in path:
        obj = obj[key]
    return obj


POD = ("spec", "template", "spec")
CONTAINER = (*POD, "containers", 0)

# (nodes, gpus) -> the trainer's command
COMMANDS = {
    (1, 0): ["refinery-train", *RUN],
    (1, 1): ["refinery-train", *RUN],
    (1, 4): ["torchrun", "--standalone", "--nproc_per_node=4", "-m", "refinery_trainer", *RUN],
    (2, 0): ["refinery-train", "launch", "--wait-for", "mn-sft-3-0.mn-sft-3", "--timeout", "600", "--",
             "torchrun", "--nnodes=2", "--nproc_per_node=1", "--node_rank=$(JOB_COMPLETION_INDEX)",
             "--master_addr=mn-sft-3-0.mn-sft-3", "--master_port=29500", "-m", "refinery_trainer", *RUN],
    (4, 8): ["refinery-train", "launch", "--wait-for", "mn-sft-3-0.mn-sft-3", "--timeout", "600", "--",
             "torchrun", "--nnodes=4", "--nproc_per_node=8", "--node_rank=$(JOB_COMPLETION_INDEX)",
             "--master_addr=mn-sft-3-0.mn-sft-3", "--master_port=29500", "-m", "refinery_trainer", *RUN],
}


@pytest.mark.parametrize(("nodes", "gpus"), list(COMMANDS))
def test_trainer_command(nodes, gpus):
    job = builders.build_stage_job(pipeline(nodes, gpus), launch())
    assert at(job, *CONTAINER, "command") == COMMANDS[nodes, gpus]


MULTI_NODE_JOB = [
    (("metadata", "name"), "mn-sft-3"),
    (("spec", "completionMode"), "Indexed"),
    (("spec", "completions"), 4),
    (("spec", "parallelism"), 4),
    (("spec", "backoffLimit"), 0),
    ((*POD, "subdomain"), "mn-sft-3"),
    ((*POD, "restartPolicy"), "Never"),
    # one rank per node: a required anti-affinity on this attempt's pods only
    ((*POD, "affinity", "podAntiAffinity", "requiredDuringSchedulingIgnoredDuringExecution"), [{
        "labelSelector": {"matchLabels": {"refinery.dev/pipeline": "mn", "refinery.dev/stage": "sft",
                                          "refinery.dev/attempt": "3"}},
        "topologyKey": "kubernetes.io/hostname"}]),
    ((*POD, "automountServiceAccountToken"), True),
    ((*POD, "securityContext", "runAsNonRoot"), True),
    ((*CONTAINER, "env", 0), {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}),
    ((*CONTAINER, "ports"), [{"name": "metrics", "containerPort": 9400, "protocol": "TCP"},
                             {"name": "rendezvous", "containerPort": 29500, "protocol": "TCP"}]),
    ((*CONTAINER, "resources"), {"requests": {"nvidia.com/gpu": "8"}, "limits": {"nvidia.com/gpu": "8"}}),
]


@pytest.mark.parametrize(("path", "expected"), MULTI_NODE_JOB, ids=lambda v: ".".join(map(str, v)) if isinstance(v, tuple) else None)
def test_multi_node_job_fields(path, expected):
    assert at(builders.build_stage_job(pipeline(4, 8), launch()), *path) == expected


def test_single_node_job_is_not_indexed_and_has_no_service():
    job = builders.build_stage_job(pipeline(1, 4), launch())
    assert "completionMode" not in job["spec"] and "subdomain" not in at(job, *POD) and "affinity" not in at(job, *POD)
    assert (job["spec"]["completions"], job["spec"]["parallelism"]) == (1, 1)
    assert all(e["name"] != "JOB_COMPLETION_INDEX" for e in at(job, *CONTAINER, "env"))
    assert builders.build_stage_service(pipeline(1, 4), launch()) is None


def test_headless_service_fields():
    p = pipeline(2, 0)
    service = builders.build_stage_service(p, launch())
    job = builders.build_stage_job(p, launch())
    assert service["apiVersion"] == "v1" and service["kind"] == "Service"
    assert service["metadata"]["name"] == job["metadata"]["name"] == at(job, *POD, "subdomain")
    assert service["metadata"]["namespace"] == "default"
    assert service["metadata"]["ownerReferences"] == job["metadata"]["ownerReferences"]
    assert service["spec"] == {
        "clusterIP": "None",
        "publishNotReadyAddresses": True,
        "selector": job["spec"]["template"]["metadata"]["labels"],
        "ports": [{"name": "rendezvous", "port": 29500, "targetPort": 29500, "protocol": "TCP"}],
    }
    # the selector picks exactly this attempt's pods
    assert service["spec"]["selector"]["refinery.dev/attempt"] == "3"


def test_pod_hostnames_fit_a_dns_label_with_long_names():
    p = make_pipeline("p" * 63).stage("pretrain", "pretrain").stage(
        "s" * 40, "sft", from_="pretrain", resources={"nodes": 64, "gpus": 0}).obj()
    job = builders.build_stage_job(p, Launch("s" * 40, 12, None))
    assert len(f"{job['metadata']['name']}-63") <= 63


def test_deepspeed_passes_through_to_the_stage_run():
    p = pipeline(2, 0, deepspeed={"zeroStage": 3, "offloadOptimizer": True})
    config = builders.build_stage_config(p, launch())
    run = StageRun.model_validate(yaml.safe_load(config["data"]["stage.yaml"]))
    assert run.stage.deepspeed.zero_stage == 3 and run.stage.deepspeed.offload_optimizer
    assert run.stage.resources.nodes == 2


# ----------------------------------------------------------------------------------------------
# two nodes through the operator and the test kubelet


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_two_node_stage_trains_under_torchrun(emulator, cluster, start_operator, kubelet, monkeypatch):
    monkeypatch.setattr(builders_distributed, "MASTER_PORT", free_port())
    manifest = make_pipeline("two").stage(
        "pretrain", "pretrain",
        model={"config": {"hiddenSize": 32, "numHiddenLayers": 1, "numAttentionHeads": 2, "intermediateSize": 64,
                          "maxPositionEmbeddings": 64}, "vocabSize": 256},
        training={"maxSteps": 6, "saveSteps": 3, "batchSize": 4, "seqLen": 32, "loggingSteps": 2},
        resources={"nodes": 2, "gpus": 0},
    ).manifest()
    data = kubelet.claim_dir("training-data") / "data"
    data.mkdir(parents=True)
    (data / "pretrain.txt").write_text((REPO / "examples" / "data" / "pretrain.txt").read_text())
    started = time.monotonic()
    async with start_operator():
        await create_pipeline(cluster, manifest)
        await wait_for(lambda: ((stored(emulator, "refinery.dev/v1alpha1/trainingpipelines", "two") or {})
                                .get("status") or {}).get("phase") in ("Succeeded", "Failed"), 120, interval=0.2,
                       what="the pipeline to finish")
    elapsed = time.monotonic() - started
    pods = kubelet.job_pods["two-pretrain-1"]
    logs = "\n".join(f"--- {p.name}\n{p.log[-2000:]}" for p in pods)
    status = stored(emulator, "refinery.dev/v1alpha1/trainingpipelines", "two")["status"]
    assert status["phase"] == "Succeeded", logs
    # two pods, one per index, each with its rank; rank 0's DNS name mapped to this host
    assert [p.index for p in pods] == [0, 1] and [p.exit_code for p in pods] == [0, 0]
    for pod in pods:
        assert pod.env["JOB_COMPLETION_INDEX"] == str(pod.index)
        assert f"--node_rank={pod.index}" in pod.command and "--nnodes=2" in pod.command
        assert "--master_addr=127.0.0.1" in pod.command and pod.command[:4] == ["refinery-train", "launch", "--wait-for", "127.0.0.1"]
    assert "x 2 processes" in pods[0].log, logs  # one world of two ranks (effective batch = 4 x 1 x 2)
    (stage,) = status["stages"]
    assert stage["lastCheckpoint"]["step"] == 6 and stage["output"].endswith("/two/pretrain/model")
    # the Service the operator created for the attempt
    service = stored(emulator, "v1/services", "two-pretrain-1")
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert sorted(stored_all(emulator, "batch/v1/jobs")) == ["two-pretrain-1", "two-sources-1-fetch"]  # inputs checked first
    print(f"\n2-node torchrun stage through the operator: {elapsed:.1f}s")
