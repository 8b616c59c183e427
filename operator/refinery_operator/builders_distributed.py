"""How a stage runs on several processes: torchrun, the Indexed Job of a multi-node stage and its
headless Service, as plain dicts (no API calls). `builders.py` calls these; names come from
`core.naming`.

    one pod, one process   refinery-train run --config /etc/refinery/stage.yaml
    one pod, G > 1 GPUs    torchrun --standalone --nproc_per_node=G -m refinery_trainer run --config ...
    N > 1 pods             refinery-train launch --wait-for <job>-0.<job> -- \\
                             torchrun --nnodes=N --nproc_per_node=G --node_rank=$(JOB_COMPLETION_INDEX) \\
                               --master_addr=<job>-0.<job> --master_port=29500 -m refinery_trainer run --config ...

Decisions written down here:
- Static rendezvous (`--master_addr` + `--node_rank`), not `--rdzv_backend=c10d`: the Indexed
  Job already gives every pod a stable index, so node ranks are known up front and global rank
  0 — the process that writes checkpoint markers, `model/`, progress and the termination
  message — always lives in pod 0, whose logs and exit code are the attempt's. c10d's elastic
  membership buys nothing here: any failed pod fails the whole attempt (backoffLimit 0), and
  the operator, not torchrun, retries it from the newest complete checkpoint.
- Rank 0's address is its pod's DNS name `<job>-0.<service>`: the Job controller names each pod's
  host `<job>-<index>`, `subdomain` puts it under the headless Service, and
  `publishNotReadyAddresses` publishes it before any readiness (stage pods have no probe).
  The Service is named as the Job (one per attempt, owned by the pipeline).
- Pods other than 0 may start before pod 0's name resolves: `refinery-train launch` waits for it
  (bounded, `RENDEZVOUS_WAIT_S`) and only then `exec`s torchrun, so a slow pod 0 costs a wait,
  never a crash-loop of rendezvous timeouts.
- `JOB_COMPLETION_INDEX` is declared on the container (downward API on the pod annotation, as
  the Job controller itself injects it) so the kubelet expands `$(JOB_COMPLETION_INDEX)` in args.
- One pod per node, required (pod anti-affinity on the attempt's labels, `kubernetes.io/hostname`):
  `nodes: N` asks for N machines, and on CPU nothing else would spread the ranks. A rank with no
  node left stays Pending and the attempt ends as `StartTimeout` (every pod must be ready).
- DeepSpeed needs nothing here: `stage.deepspeed` travels in the StageRun and the trainer hands
  it to transformers under torchrun (trainer/refinery_trainer/distributed.py).
"""

from __future__ import annotations

from typing import Any

from refinery.api.v1alpha1 import Stage

MASTER_PORT = 29500  # torchrun's default rendezvous port, on rank 0's pod
RENDEZVOUS_WAIT_S = 600  # how long pods other than 0 wait for pod 0's DNS name
INDEX_ENV = "JOB_COMPLETION_INDEX"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
TRAINER_MODULE = ["-m", "refinery_trainer"]
HOSTNAME_TOPOLOGY = "kubernetes.io/hostname"  # one pod of an attempt per node


def is_multi_node(stage: Stage) -> bool:
    return stage.resources.nodes > 1


def processes_per_node(stage: Stage) -> int:
    """One process per GPU; one per pod on CPU (gloo)."""
    return max(stage.resources.gpus, 1)


def master_address(job: str, service: str) -> str:
    """DNS name of pod 0 (global rank 0) of an Indexed Job under its headless Service."""
    return f"{job}-0.{service}"


def stage_command(stage: Stage, job: str, service: str, run_args: list[str]) -> list[str]:
    """The container command of one stage attempt. `run_args`: `run --config <file>`."""
    if is_multi_node(stage):
        address = master_address(job, service)
        torchrun = [
            "torchrun",
            f"--nnodes={stage.resources.nodes}",
            f"--nproc_per_node={processes_per_node(stage)}",
            f"--node_rank=$({INDEX_ENV})",
            f"--master_addr={address}",
            f"--master_port={MASTER_PORT}",
            *TRAINER_MODULE,
            *run_args,
        ]
        return ["refinery-train", "launch", "--wait-for", address, "--timeout", str(RENDEZVOUS_WAIT_S), "--", *torchrun]
    if stage.resources.gpus > 1:
        return ["torchrun", "--standalone", f"--nproc_per_node={stage.resources.gpus}", *TRAINER_MODULE, *run_args]
    return ["refinery-train", *run_args]


def index_env() -> list[dict[str, Any]]:
    """`JOB_COMPLETION_INDEX` (declared, so `$(JOB_COMPLETION_INDEX)` expands in the command)."""
    field = f"metadata.annotations['{INDEX_ANNOTATION}']"
    return [{"name": INDEX_ENV, "valueFrom": {"fieldRef": {"fieldPath": field}}}]


def multi_node_job_spec(stage: Stage, service: str) -> dict[str, Any]:
    """What an Indexed Job adds to a stage Job's spec: N pods, each with its index."""
    nodes = stage.resources.nodes
    return {"completionMode": "Indexed", "completions": nodes, "parallelism": nodes}


def multi_node_pod_spec(service: str, attempt_labels: dict[str, str]) -> dict[str, Any]:
    """What each pod of an Indexed Job adds: its host `<job>-<index>` under the Service, and one
    node per pod (`nodes` means nodes: two ranks on one node would share its GPUs, NICs and fate)."""
    return {
        "subdomain": service,
        "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": dict(attempt_labels)}, "topologyKey": HOSTNAME_TOPOLOGY},
        ]}},
    }


def rendezvous_port() -> dict[str, Any]:
    return {"name": "rendezvous", "containerPort": MASTER_PORT, "protocol": "TCP"}


def build_headless_service(metadata: dict[str, Any], selector: dict[str, str]) -> dict[str, Any]:
    """The Service that gives each pod of a multi-node attempt a DNS name (no virtual IP)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "clusterIP": "None",
            # Pods are published while starting: rank 0 must resolve before anything is "ready".
            "publishNotReadyAddresses": True,
            "selector": dict(selector),
            "ports": [{"name": "rendezvous", "port": MASTER_PORT, "targetPort": MASTER_PORT, "protocol": "TCP"}],
        },
    }
