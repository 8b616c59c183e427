"""In-place restart (torchrun `--max-restarts`, c10d rendezvous) against Refinery's whole-attempt
restart, on the same disruption: rank 1's pod of a 2-node pretrain stage deleted mid-training.

    python benchmarks/inplace_restart.py            # root; ~8 min on 2 cores (cluster start included)

One cluster (benchmarks/realnodes.py), the same stage (examples/tiny-chat.yaml's pretrain,
`nodes: 2`, a checkpoint every 20 steps), two ways:

- whole: a TrainingPipeline as users run it. The deletion fails the Job, the operator judges the
  attempt a Disruption and creates attempt 2 (a new Job and Service, both ranks new pods), which
  resumes from the newest complete checkpoint.
- inplace: the very objects the operator would create (builders.py), applied without an
  operator, with the two changes in-place restarts need: torchrun gets `--rdzv_backend=c10d
  --rdzv_endpoint=<rank 0's pod>:29500 --max-restarts=3` instead of a static rank, and the Job
  replaces a failed pod itself (`backoffLimit: 3`, no podFailurePolicy). The replacement pod of
  index 1 should rejoin the rendezvous and the surviving agent restart its worker, all in one Job.

Measured from the `kubectl delete pod` (wall clock) to the first training log line after the
restart in rank 0's metrics.jsonl (the trainer logs every 5 steps): `seconds_to_training`; and
`steps_lost`: the last step logged before the restart minus the step the restart resumed from.
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from realnodes import REPO, metrics_log, namespace_with_volume, pipeline, rank_pod, stage_status, two_nodes, wait_for

from refinery_operator import builders
from refinery.core.plan import Launch
from refinery_operator.reconcile import parse_pipeline

LOGGING_STEPS, SAVE_STEPS, DELETE_AFTER = 5, 20, 40


def stage(steps: int) -> dict[str, Any]:
    chat = yaml.safe_load((REPO / "examples" / "tiny-chat.yaml").read_text())["spec"]["stages"][0]
    return {**chat, "training": {**chat["training"], "maxSteps": steps, "saveSteps": SAVE_STEPS,
                                 "loggingSteps": LOGGING_STEPS, "seed": 42},
            "resources": {"gpus": 0, "nodes": 2}, "retries": {"application": 0, "infrastructure": 0, "disruption": 2}}


def training_rows(volume: Path, name: str, attempt: int) -> list[dict[str, Any]]:
    """Logged training steps (with a loss): not the evaluation line a (re)start writes at its first step."""
    return [r for r in metrics_log(volume, name, "pretrain", attempt) if r.get("loss") is not None]


def restart_of(rows: list[dict[str, Any]], since: float) -> tuple[dict[str, Any], int] | None:
    """(first training line after a restart, last training step logged before it). A (re)started
    trainer first logs its evaluation at step 0 (a line without `loss`); the steps themselves need
    not go back (a deletion right after a checkpoint resumes at the step it had reached)."""
    for i, row in enumerate(rows):
        if row["time"] > since and row["step"] == 0 and row.get("loss") is None:
            after = next((r for r in rows[i + 1:] if r.get("loss") is not None), None)
            before = [r["step"] for r in rows[:i] if r.get("loss") is not None]
            return (after, max(before, default=0)) if after else None
    return None


def delete_rank_1(cluster, name: str, job: str, volume: Path, attempt: int = 1) -> float:
    """Wait for step DELETE_AFTER, delete index 1's pod; the wall-clock time of the deletion."""
    wait_for(lambda: max((r["step"] for r in metrics_log(volume, name, "pretrain", attempt)), default=0) >= DELETE_AFTER,
             600, f"{name}: step {DELETE_AFTER}")
    pod = wait_for(lambda: rank_pod(cluster, name, job, "1"), 60, f"{name}: rank 1's pod")
    cluster.kubectl.run("delete", "pod", "-n", name, pod["metadata"]["name"], "--wait=false")
    return time.time()


def whole(cluster, folder: Path, steps: int) -> dict[str, Any]:
    name = "whole"
    volume = namespace_with_volume(cluster, folder, name)
    cluster.kubectl.apply([pipeline(cluster, name, [stage(steps)])])
    deleted = delete_rank_1(cluster, name, f"{name}-pretrain-1", volume)
    first = wait_for(lambda: training_rows(volume, name, 2), 600, "attempt 2 training")[0]
    last = max(r["step"] for r in training_rows(volume, name, 1))
    final = wait_for(lambda: (s := stage_status(cluster, name))["pipeline"] in ("Succeeded", "Failed") and s, 1200, "end")
    resumed = final["resumedFrom"]["step"]
    return {"seconds_to_training": round(first["time"] - deleted, 1), "steps_lost": last - resumed,
            "resumed_from": resumed, "last_step_before": last, "end": final["pipeline"],
            "failure": f"{final['lastFailure']['class']}/{final['lastFailure']['reason']}", "jobs": final["attempt"]}


def inplace_objects(cluster, steps: int) -> list[dict[str, Any]]:
    """What the operator would create for attempt 1, changed for torchrun's own restarts."""
    body = pipeline(cluster, "inplace", [stage(steps)])
    body["metadata"]["uid"] = "00000000-0000-0000-0000-000000000024"
    typed = parse_pipeline(body)
    launch = Launch("pretrain", 1, None)
    objects = [*builders.build_pipeline_objects(typed), builders.build_stage_config(typed, launch),
               builders.build_stage_service(typed, launch), builders.build_stage_job(typed, launch)]
    for obj in objects:  # no pipeline object owns them here: the garbage collector would delete them
        obj["metadata"].pop("ownerReferences", None)
    job = objects[-1]
    job["spec"]["backoffLimit"] = 3
    job["spec"].pop("podFailurePolicy")
    container = job["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]
    address = next(a.split("=", 1)[1] for a in command if a.startswith("--master_addr="))
    static = ("--node_rank=", "--master_addr=", "--master_port=")
    torchrun = command.index("torchrun")
    container["command"] = [*command[:torchrun + 1],
                            *[a for a in command[torchrun + 1:] if not a.startswith(static)][:2],
                            "--rdzv_backend=c10d", f"--rdzv_endpoint={address}:29500", "--rdzv_id=inplace",
                            "--max-restarts=3",
                            *[a for a in command[torchrun + 1:] if not a.startswith(static)][2:]]
    return objects


def inplace(cluster, folder: Path, steps: int) -> dict[str, Any]:
    name = "inplace"
    volume = namespace_with_volume(cluster, folder, name)
    objects = inplace_objects(cluster, steps)
    job = objects[-1]["metadata"]["name"]
    cluster.kubectl.apply(objects)
    deleted = delete_rank_1(cluster, name, job, volume)
    def conditions() -> set[str]:
        status = cluster.get("job", job, "-n", name).get("status", {})
        return {c["type"] for c in status.get("conditions", []) if c["status"] == "True"}

    def restarted_or_failed():
        return restart_of(metrics_log(volume, name, "pretrain", 1), deleted) or ("Failed" in conditions() and "Failed")
    found = wait_for(restarted_or_failed, 600, "in-place restart")
    if found == "Failed":
        return {"end": "Failed", "jobs": 1, "seconds_to_training": None, "steps_lost": None, "resumed_from": None,
                "last_step_before": None, "pods_created": len(cluster.get("pods", "-n", name, "-l", f"job-name={job}")["items"])}
    first, last = found
    resumed = first["step"] - LOGGING_STEPS  # checkpoints fall on multiples of the logging interval
    done = wait_for(lambda: conditions() & {"Complete", "Failed"}, 1200, "the Job to end")
    pods = cluster.get("pods", "-n", name, "-l", f"job-name={job}")["items"]
    return {"seconds_to_training": round(first["time"] - deleted, 1), "steps_lost": last - resumed,
            "resumed_from": resumed, "last_step_before": last, "end": "Complete" if "Complete" in done else "Failed",
            "pods_created": len(pods), "jobs": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="refinery-inplace-") as tmp, two_nodes(Path(tmp)) as cluster:
        figures = {"whole": whole(cluster, Path(tmp), args.steps), "inplace": inplace(cluster, Path(tmp), args.steps)}
    report(figures)
    print(json.dumps(figures))


def report(figures: dict[str, dict[str, Any]]) -> None:
    for way, f in figures.items():
        print(f"{way:<8} {f['seconds_to_training']:>6} s from the deletion to training again, resumed from step "
              f"{f['resumed_from']} (last step logged before: {f['last_step_before']}, {f['steps_lost']} lost); "
              f"{f['jobs']} Job(s); end: {f['end']}")


if __name__ == "__main__":
    main()
