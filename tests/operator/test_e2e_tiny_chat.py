"""End to end: examples/tiny-chat.yaml (pretrain -> sft -> reward -> rlhf -> eval, then the export)
through the real operator.

The real kopf operator runs in-process against kmock's Kubernetes emulator (see conftest.py for
what kmock does not emulate); the test kubelet (kubelet.py) runs each Job's pod as a local
`refinery-train run --config ...` process — the real trainer, training real tiny models on the
CPU — with the volume mapped to a temp dir. Progress reaches the emulator the way it does in a
cluster: the trainer's reporter patches the stage's progress ConfigMap (KUBECONFIG points at the
emulator), kopf sees the event, the operator folds it into `.status`.

Meanwhile the same manifest runs in local mode (`refinery run`, a subprocess), and the metrics
each stage reports are compared: the operator and local mode share plan() and the trainer.
The operator is restarted while the sft stage runs: no Job may be created twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import kmock
import pytest
import yaml

from refinery_operator.handlers import RESYNC_S

from .conftest import NAMESPACE, create_pipeline, stored, stored_all, wait_for

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "examples" / "tiny-chat.yaml"
STAGES = ["pretrain", "sft", "reward", "rlhf"]  # the stages that train
ALL_STAGES = [*STAGES, "eval", "export"]
PIPELINES_KEY = "refinery.dev/v1alpha1/trainingpipelines"
# Bounds, not timings: the example runs twice at once (operator and local mode) on a shared CPU.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def status_of(emulator) -> dict:
    return (stored(emulator, PIPELINES_KEY, "tiny-chat") or {}).get("status") or {}


async def sample_checkpoint_latency(emulator, samples: list[float]) -> None:
    """Time from a checkpoint landing in a progress ConfigMap to it showing in `.status`."""
    reported: dict[tuple[str, int], float] = {}
    seen: set[tuple[str, int]] = set()
    while True:
        now = time.monotonic()
        for stage in STAGES:
            cm = stored(emulator, "v1/configmaps", f"tiny-chat-{stage}-progress") or {}
            text = (cm.get("data") or {}).get("progress.json") or ""
            checkpoint = json.loads(text).get("lastCheckpoint") if text else None
            if checkpoint:
                reported.setdefault((stage, checkpoint["step"]), now)
        for stage in status_of(emulator).get("stages", []):
            key = (stage["name"], (stage.get("lastCheckpoint") or {}).get("step"))
            if key in reported and key not in seen:
                seen.add(key)
                samples.append(now - reported[key])
        await asyncio.sleep(0.02)


async def run_local_mode(workdir: Path) -> asyncio.subprocess.Process:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = open(workdir / "local.log", "wb")  # noqa: SIM115 - closed with the process
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "refinery_operator.cli", "run", str(MANIFEST), "--workdir", str(workdir), "--quiet",
        stdout=log, stderr=asyncio.subprocess.STDOUT, env=env, cwd=workdir,
    )


async def test_tiny_chat_runs_end_to_end(emulator, cluster, start_operator, kubelet, tmp_path):
    started = time.monotonic()
    manifest = yaml.safe_load(MANIFEST.read_text())
    claim = f"{manifest['metadata']['name']}-workspace"  # the PVC built from spec.storage.claim
    shutil.copytree(REPO / "examples" / "data", kubelet.claim_dir(claim) / "data")  # "copy examples/data to the volume"
    (tmp_path / "local").mkdir()
    local = await run_local_mode(tmp_path / "local")
    latencies: list[float] = []
    probe = asyncio.create_task(sample_checkpoint_latency(emulator, latencies))
    try:
        async with start_operator():
            created = await create_pipeline(cluster, manifest)
            await wait_for(lambda: "tiny-chat-sft-1" in kubelet.pods, 150, interval=0.2, what="the sft Job")
        requests_before_restart = len(list(emulator))
        async with start_operator():  # a new operator while sft trains
            await wait_for(lambda: status_of(emulator).get("phase") in ("Succeeded", "Failed"), 900, interval=0.2,
                           what="the pipeline to finish")
        operator_done = time.monotonic() - started
        assert await asyncio.wait_for(local.wait(), 600) == 0, (tmp_path / "local" / "local.log").read_text()[-3000:]
    finally:
        probe.cancel()
        if local.returncode is None:
            local.kill()
    status = status_of(emulator)
    print(f"\noperator pipeline done in {operator_done:.0f}s; checkpoint->status latency over {len(latencies)} "
          f"checkpoints: median {statistics.median(latencies or [0]):.3f}s, max {max(latencies or [0]):.3f}s")
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[:3000]

    # Jobs: deterministic names, one per stage (the restart created none twice) plus the inputs check, owned, on GPUs.
    jobs = stored_all(emulator, "batch/v1/jobs")
    assert sorted(jobs) == sorted([*(f"tiny-chat-{s}-1" for s in ALL_STAGES), "tiny-chat-sources-1-fetch"])
    posted_after_restart = [r.data["metadata"]["name"] for r in list(emulator)[requests_before_restart:]
                            if r.action == kmock.action.CREATE and r.resource == kmock.resource("batch/v1/jobs")]
    assert "tiny-chat-sft-1" not in posted_after_restart and "tiny-chat-pretrain-1" not in posted_after_restart
    for name, job in jobs.items():
        owner = job["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == \
               ("TrainingPipeline", "tiny-chat", created["metadata"]["uid"], True)
        pod = job["spec"]["template"]["spec"]
        gpus = ((pod["containers"][0].get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu")
        # The export copies files, the initializer checks them: no GPU.
        assert gpus == (None if name in ("tiny-chat-export-1", "tiny-chat-sources-1-fetch") else "1"), name
        assert {"name": "workspace", "persistentVolumeClaim": {"claimName": claim}} in pod["volumes"]
        assert {"name": "workspace", "mountPath": "/workspace"} in pod["containers"][0]["volumeMounts"]
    assert stored(emulator, "v1/persistentvolumeclaims", claim)["spec"]["resources"]["requests"]["storage"] == "1Gi"

    # Status: every stage has its checkpoint, progress, metrics and output.
    stages = {s["name"]: s for s in status["stages"]}
    for name in STAGES:
        stage = stages[name]
        assert stage["phase"] == "Succeeded" and stage["progress"] == 1.0
        assert stage["lastCheckpoint"]["step"] > 0 and stage["checkpoints"] >= 1
        assert stage["metrics"], name
        assert stage["output"].endswith(f"{NAMESPACE}/tiny-chat/{name}/model")
        assert Path(stage["output"], "config.json").exists()  # on the (mapped) volume
    assert stages["rlhf"]["inputs"] == {"model": stages["sft"]["output"], "rewardModel": stages["reward"]["output"]}
    # The eval stage scored sft and rlhf; its gate held, so the export wrote the rlhf model to the volume.
    assert stages["eval"]["metrics"]["rlhf.exactMatch"] >= stages["eval"]["metrics"]["sft.exactMatch"]
    exported = kubelet.claim_dir(claim) / "exports" / "tiny-chat"
    assert (exported / "model.safetensors").is_file() and "`rlhf`" in (exported / "README.md").read_text()

    # Same pipeline, same trainer, same plan(): local mode reports the same metrics per stage.
    local_status = json.loads((tmp_path / "local" / "tiny-chat" / "status.json").read_text())
    local_metrics = {s["name"]: set(s["metrics"]) for s in local_status["stages"]}
    assert {n: set(stages[n]["metrics"]) for n in ALL_STAGES} == local_metrics

    # Every checkpoint reached .status on the watch event that reported it, not at the daemon's
    # RESYNC_S backstop (which would spread them over 0-30 s). The typical one within the design
    # target (1 s; benchmarks/operator_latency.py measures p99 on an idle machine). The slowest is
    # the machine's, not the operator's: two trainings share this process's CPUs and a slow or
    # busy machine stalls it for seconds at a time, so it is bounded well under the backstop only.
    assert latencies, "no checkpoint was observed"
    assert statistics.median(latencies) < 1.0, latencies
    assert max(latencies) < RESYNC_S / 3, latencies
