"""The operator stopped and restarted at random moments (12 times) while a 4-stage pipeline runs.

Each restart is a new kopf operator (new memo, no cached status) against the same emulated
cluster, as after a crash or a rollout; the stage pods keep running meanwhile. The stop is
kopf's own shutdown, which cancels whatever the operator was doing at that moment (a reconcile
between creating a Job and patching the status, for instance) — not a SIGKILL of a process,
which a thread cannot undergo; what the operator persisted is exactly the same either way,
since it keeps no state outside the API server.

Checked: no duplicate Job (only the four attempt-1 Jobs ever exist, never a spurious retry), no
lost status (sampled every 50 ms: no stage's attempt, checkpoint count or phase goes backwards),
and the pipeline completes with every checkpoint accounted for.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest

from tests.builders import chat_pipeline

from .conftest import create_pipeline, stored, stored_all, wait_for
from .test_operator_fake_stage import FAKE_STAGE, PIPELINES_KEY, phase

pytestmark = pytest.mark.timeout(240)
RESTARTS = 12  # restarts while the pipeline runs (at least 10 asked for)
SEED = 20261125
PHASE_ORDER = {"Pending": 0, "Running": 1, "Succeeded": 2}


@pytest.fixture(autouse=True)
def fake_trainer(kubelet):
    kubelet.command_map["refinery-train"] = FAKE_STAGE


def snapshot(emulator):
    status = (stored(emulator, PIPELINES_KEY, "chaos") or {}).get("status") or {}
    return {s["name"]: (s.get("attempt", 0), s.get("checkpoints", 0), s.get("phase", "Pending")) for s in status.get("stages", [])}


async def sample(emulator, seen: list) -> None:
    while True:
        seen.append(snapshot(emulator))
        await asyncio.sleep(0.05)


async def test_operator_restarted_at_random_points_completes_without_duplicates(emulator, cluster, start_operator, kubelet):
    rng = random.Random(SEED)
    manifest = chat_pipeline("chaos").manifest()
    for stage in manifest["spec"]["stages"]:
        stage["training"] = {"maxSteps": 100, "saveSteps": 10}  # ~5 s of steps per stage
    seen: list = []
    sampler = asyncio.create_task(sample(emulator, seen))
    try:
        await create_pipeline(cluster, manifest)
        for _ in range(RESTARTS):
            async with start_operator():
                await asyncio.sleep(rng.uniform(0.1, 1.5))  # then stopped mid-whatever
            assert phase(emulator, "chaos") != "Succeeded", "the pipeline finished before the restarts were done"
        async with start_operator():
            await wait_for(lambda: phase(emulator, "chaos") in ("Succeeded", "Failed"), 90, what="the pipeline to finish")
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler

    status = stored(emulator, PIPELINES_KEY, "chaos")["status"]
    assert status["phase"] == "Succeeded", status
    assert sorted(stored_all(emulator, "batch/v1/jobs")) == ["chaos-pretrain-1", "chaos-reward-1", "chaos-rlhf-1", "chaos-sft-1",
                                                               "chaos-sources-1-fetch"]
    for stage in status["stages"]:
        assert (stage["attempt"], stage["restarts"], stage["phase"]) == (1, 0, "Succeeded"), stage
        assert stage["checkpoints"] == 10 and stage["lastCheckpoint"]["step"] == 100 and stage["output"].endswith("/model")
    # No lost status: nothing the operator recorded ever went backwards.
    for before, after in zip(seen, seen[1:]):
        for name, (attempt, checkpoints, stage_phase) in before.items():
            assert name in after, f"stage {name} vanished from the status"
            a2, c2, p2 = after[name]
            assert a2 >= attempt and c2 >= checkpoints and PHASE_ORDER[p2] >= PHASE_ORDER[stage_phase], (before, after)
