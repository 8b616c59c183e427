"""`refinery.Client` and the CLI verbs against a real API server, the operator running a pipeline
with the fake stage (two stages of 100 steps, 5 s each): apply, get, wait (Running, Suspended,
Succeeded), suspend and resume through `spec.suspend`, stages, events, metrics, logs (the test node
serves pod logs at the kubelet's endpoint: podlogs.py), delete; `refinery get`, `describe`,
`logs -f` and the exit codes of a pipeline or stage that does not exist.

`pytest -s` prints what `refinery describe` and `refinery logs -f` showed (the README quotes it)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from refinery import Client, TrainingPipeline
from refinery.client import NotFound, WaitTimeout

from .test_faults import chain

pytestmark = pytest.mark.timeout(240)


def refinery(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "refinery_operator.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


async def test_client_and_cli_verbs(admin_kubeconfig, namespace, node, chart_operator):
    operator = chart_operator()
    operator.start()
    await asyncio.to_thread(operator.wait_live)
    client = Client(kubeconfig=str(admin_kubeconfig), namespace=namespace)
    where = ["--kubeconfig", str(admin_kubeconfig), "-n", namespace]
    manifest = chain("cli", namespace, stages=2, steps=100)
    for stage in manifest["spec"]["stages"]:
        stage["training"]["saveSteps"] = 20
    pipeline = TrainingPipeline.model_validate(manifest)

    applied = await asyncio.to_thread(client.apply, pipeline)
    assert (applied.metadata.name, applied.metadata.namespace) == ("cli", namespace)
    with pytest.raises(NotFound, match="'nope' not found"):
        client.get("nope")
    with pytest.raises(WaitTimeout):
        await asyncio.to_thread(client.wait, "cli", until="Succeeded", timeout=0.5, progress=False)

    # Suspended while s0 trains, then resumed from its checkpoint.
    running = await asyncio.to_thread(client.wait, "cli", until="Running", timeout=60, progress=False)
    assert running.status.current_stage == "s0"

    def s0_checkpointed():
        return client.stages("cli")[0].last_checkpoint is not None

    for _ in range(600):
        if await asyncio.to_thread(s0_checkpointed):
            break
        await asyncio.sleep(0.05)
    client.suspend("cli")
    suspended = await asyncio.to_thread(client.wait, "cli", until="Suspended", timeout=60, progress=False)
    assert suspended.spec.suspend is True

    def stopped():  # phase Suspended comes first; condition Suspended says Suspended (not Suspending) once the pod is gone
        return any(c.type == "Suspended" and c.reason == "Suspended" for c in client.get("cli").status.conditions)

    for _ in range(600):
        if await asyncio.to_thread(stopped):
            break
        await asyncio.sleep(0.1)
    client.resume("cli")
    assert client.get("cli").spec.suspend is False
    await asyncio.to_thread(client.wait, "cli", until="Running", timeout=60, progress=False)

    # `refinery logs -f` on s1 while it trains: it ends when the attempt does.
    def s1_running():
        return next(s for s in client.stages("cli") if s.name == "s1").phase == "Running"

    for _ in range(600):
        if await asyncio.to_thread(s1_running):
            break
        await asyncio.sleep(0.1)
    followed = await asyncio.to_thread(refinery, "logs", "cli", "s1", "-f", *where)
    assert followed.returncode == 0, followed.stderr
    assert "succeeded in 100 steps" in followed.stdout.splitlines()[-1], followed.stdout

    done = await asyncio.to_thread(client.wait, "cli", timeout=120, progress=False)
    assert done.status.phase == "Succeeded"
    stages = client.stages("cli")
    assert [(s.name, s.phase, s.step) for s in stages] == [("s0", "Succeeded", 100), ("s1", "Succeeded", 100)]
    assert stages[0].attempt == 1  # suspend keeps the attempt: the same Job resumes
    reasons = [e.reason for e in client.events("cli")]
    for reason in ("StageStarted", "Suspended", "Resumed", "StageSucceeded", "PipelineSucceeded"):
        assert reason in reasons, reasons
    assert client.metrics("cli", "s1") == [{"step": 100, **stages[1].metrics}]
    s0_log = list(client.logs("cli", "s0"))
    assert "resuming from step" in "\n".join(s0_log) and s0_log[-1].startswith("stage 's0' succeeded"), s0_log

    listed = refinery("get", *where)
    assert listed.returncode == 0 and listed.stdout.splitlines()[0].split()[:3] == ["NAME", "STAGE", "PHASE"]
    assert listed.stdout.splitlines()[1].split()[:2] == ["cli", "Succeeded"], listed.stdout
    described = refinery("describe", "tp/cli", *where)
    assert described.returncode == 0, described.stderr
    assert described.stdout.splitlines()[0].split() == ["Name:", "cli"], described.stdout
    for part in ("Succeeded (2/2 stages done)", "Stages:", "Conditions:", "Lineage:", "Events:",
                 "s1: from s0", "PipelineSucceeded"):
        assert part in described.stdout, described.stdout
    print(f"\n$ refinery describe tp/cli\n{described.stdout}\n$ refinery logs cli s1 -f\n{followed.stdout}")

    missing = refinery("describe", "nope", *where)
    assert (missing.returncode, missing.stdout) == (3, "")
    assert missing.stderr == f"error: trainingpipeline 'nope' not found in namespace {namespace!r} (context {client.backend.context})\n"
    no_stage = refinery("logs", "cli", "s9", *where)
    assert no_stage.returncode == 3 and no_stage.stderr.startswith("error: pipeline 'cli' has no stage 's9'")

    client.delete("cli")
    for _ in range(300):  # kopf releases its finalizer first
        try:
            client.get("cli")
        except NotFound:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the pipeline was not deleted")
