"""The same pretrain stage on two real nodes (`nodes: 2`) and on one, with the same global batch.

    python benchmarks/multinode.py                  # root; ~8 min on 2 cores (cluster start included)
    python benchmarks/multinode.py --steps 300 --batch 16
    python benchmarks/multinode.py --restarts       # and benchmarks/inplace_restart.py's figures, same cluster

One cluster (benchmarks/realnodes.py: a control plane, two nodes with cluster DNS and pod routes,
the chart's operator), then two pipelines one after the other, each a pretrain stage of
examples/tiny-chat.yaml with the same seed, steps and global batch: `nodes: 1, batchSize: B`
(one pod) and `nodes: 2, batchSize: B/2` (an Indexed Job, one rank per node, torchrun over gloo
across the two node bridges; the trainer's batchSize is per process). Printed per run: the mean
of the last three logged losses, tokens/s (the stage's final `tokensPerSecond`: every rank's
tokens over the time spent in steps), stage time (status startTime to completionTime: pod start,
imports, training, save); then multi/single ratios. The last stdout line is one JSON object.

Read the ratios for what this machine is: both "nodes" are on the same 2 CPU cores, so two ranks
split the cores one rank had alone and add gloo's all-reduce over pod-to-pod TCP. The figures
show the cost of going multi-node (rendezvous, DNS, a second pod, the collective) and that the
loss ends where a single node's does, not a speed-up; that needs nodes with their own devices.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from realnodes import REPO, metrics_log, namespace_with_volume, pipeline, stage_status, two_nodes, wait_for


def stage(nodes: int, batch: int, steps: int) -> dict[str, Any]:
    chat = yaml.safe_load((REPO / "examples" / "tiny-chat.yaml").read_text())["spec"]["stages"][0]
    training = {**chat["training"], "maxSteps": steps, "batchSize": batch // nodes, "saveSteps": steps,
                "loggingSteps": 10, "seed": 42}
    return {**chat, "training": training, "resources": {"gpus": 0, "nodes": nodes},
            "retries": {"application": 0, "infrastructure": 0, "disruption": 0}}


def run(cluster, folder: Path, name: str, nodes: int, batch: int, steps: int) -> dict[str, Any]:
    volume = namespace_with_volume(cluster, folder, name)
    cluster.kubectl.apply([pipeline(cluster, name, [stage(nodes, batch, steps)])])
    final = wait_for(lambda: (s := stage_status(cluster, name))["pipeline"] in ("Succeeded", "Failed") and s,
                     1800, f"{name} to end", interval=2)
    if final["pipeline"] != "Succeeded":
        raise SystemExit(f"{name}: {final['pipeline']}: {final.get('lastFailure') or final.get('message')}")
    logged = metrics_log(volume, name, "pretrain", 1)
    losses = [r["loss"] for r in logged if r.get("loss") is not None]
    seconds = (datetime.fromisoformat(final["completionTime"]) - datetime.fromisoformat(final["startTime"])).total_seconds()
    return {"nodes": nodes, "batch_per_process": batch // nodes, "global_batch": batch, "steps": steps,
            "first_loss": round(losses[0], 4), "final_loss": round(statistics.mean(losses[-3:]), 4),
            "tokens_per_second": round(final.get("metrics", {}).get("tokensPerSecond") or statistics.median(
                r["tokens_per_second"] for r in logged if r.get("tokens_per_second")), 1), "stage_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16, help="global batch (sequences per optimiser step)")
    parser.add_argument("--restarts", action="store_true",
                        help="then, on the same cluster, benchmarks/inplace_restart.py's comparison (saves a cluster start)")
    args = parser.parse_args()
    restarts = None
    with tempfile.TemporaryDirectory(prefix="refinery-multinode-") as tmp, two_nodes(Path(tmp)) as cluster:
        single = run(cluster, Path(tmp), "single", 1, args.batch, args.steps)
        multi = run(cluster, Path(tmp), "multi", 2, args.batch, args.steps)
        if args.restarts:
            import inplace_restart

            restarts = {way: getattr(inplace_restart, way)(cluster, Path(tmp), 100) for way in ("whole", "inplace")}
    if restarts:
        inplace_restart.report(restarts)
    ratios = {"final_loss": round(multi["final_loss"] / single["final_loss"], 3),
              "tokens_per_second": round(multi["tokens_per_second"] / single["tokens_per_second"], 3),
              "stage_seconds": round(multi["stage_seconds"] / single["stage_seconds"], 3)}
    print(f"{'':<22}{'single (1 node)':>18}{'multi (2 nodes)':>18}{'multi/single':>14}")
    for key in ("final_loss", "tokens_per_second", "stage_seconds"):
        print(f"{key:<22}{single[key]:>18}{multi[key]:>18}{ratios[key]:>14}")
    print(f"first loss {single['first_loss']} / {multi['first_loss']}; global batch {args.batch}, {args.steps} steps; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(json.dumps({"single": single, "multi": multi, "ratios": ratios, **({"restarts": restarts} if restarts else {})}))


if __name__ == "__main__":
    main()
