"""Kill a stage process mid-training, then check the next attempt resumes from the newest
*complete* checkpoint — never from a folder without its marker — and finishes the planned steps."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from refinery.api.run import CHECKPOINT_MARKER
from refinery_trainer.checkpoints import complete_checkpoints, checkpoint_step

from .conftest import TINY_MODEL, make_corpus, read_json, stage_run, wait_for_marker, write_config

pytestmark = pytest.mark.slow

MAX_STEPS = 200


def refinery_train(config: Path) -> list[str]:
    exe = shutil.which("refinery-train")
    prefix = [exe] if exe else [sys.executable, "-m", "refinery_trainer.cli"]
    return [*prefix, "run", "--config", str(config)]


def test_killed_stage_resumes_from_last_complete_checkpoint(workspace):
    make_corpus(workspace / "data" / "corpus.txt", docs=120)
    stage_dir = workspace / "p" / "pretrain"

    def config(attempt: int) -> Path:
        run = stage_run(workspace, "pretrain", "pretrain", data={"path": "data/corpus.txt"}, model=TINY_MODEL,
                        attempt=attempt, training={"maxSteps": MAX_STEPS, "saveSteps": 10, "loggingSteps": 10})
        return write_config(workspace / f"attempt-{attempt}.yaml", run)

    first = subprocess.Popen(refinery_train(config(1)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_marker(stage_dir, first, timeout_s=120)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        first.kill()
        first.stderr.close()
    assert first.returncode == -signal.SIGKILL
    assert not (stage_dir / "result.json").exists()

    complete = complete_checkpoints(stage_dir)
    last_step = checkpoint_step(complete[0])
    assert last_step < MAX_STEPS - 60, "the first attempt finished too far before it was killed"
    # A partial write of a later checkpoint: every file of a real one, except the marker.
    partial = stage_dir / "attempt-1" / "checkpoints" / f"checkpoint-{last_step + 50}"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(complete[0], partial)
    (partial / CHECKPOINT_MARKER).unlink()

    second = subprocess.run(refinery_train(config(2)), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "missing keys" not in second.stderr and "Traceback" not in second.stderr

    progress = read_json(stage_dir / "progress.json")
    assert progress["phase"] == "Succeeded" and progress["attempt"] == 2
    assert progress["resumedFrom"]["step"] == last_step
    assert progress["resumedFrom"]["path"] == str(complete[0])
    result = read_json(stage_dir / "result.json")
    assert result["steps"] == MAX_STEPS and result["attempt"] == 2
    resumed_steps = sorted(checkpoint_step(p) for p in (stage_dir / "attempt-2" / "checkpoints").glob("checkpoint-*"))
    assert resumed_steps and resumed_steps[-1] == MAX_STEPS and resumed_steps[0] > last_step
    assert not (partial / CHECKPOINT_MARKER).exists()
    state = read_json(stage_dir / "attempt-2" / "checkpoints" / f"checkpoint-{MAX_STEPS}" / "trainer_state.json")
    assert state["global_step"] == MAX_STEPS


def test_sigterm_saves_a_checkpoint_then_exits_143(workspace):
    """Kubernetes sends SIGTERM before killing an evicted or preempted pod: keep the work done."""
    make_corpus(workspace / "data" / "corpus.txt", docs=120)
    stage_dir = workspace / "p" / "pretrain"
    run = stage_run(workspace, "pretrain", "pretrain", data={"path": "data/corpus.txt"}, model=TINY_MODEL,
                    training={"maxSteps": 400, "saveSteps": 25, "loggingSteps": 10})
    proc = subprocess.Popen(refinery_train(write_config(workspace / "run.yaml", run)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_marker(stage_dir, proc, timeout_s=120)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and not (stage_dir / "result.json").exists()
    progress = read_json(stage_dir / "progress.json")
    assert progress["phase"] == "Failed" and progress["failureReason"] == "Terminated"
    newest = complete_checkpoints(stage_dir)[0]
    assert progress["lastCheckpoint"]["path"] == str(newest)
    assert f"step {checkpoint_step(newest)}" in progress["message"]
