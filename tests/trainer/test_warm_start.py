"""Local mode's warm start (refinery_operator.local.launcher, refinery_trainer.warm): a stage process
forked from the fork server behaves as the cold `python -m refinery_trainer run` would — the same
exit code, message and termination message, its own environment, its output in its log, a signal
reported as one — and a stage the server cannot serve warm (one using DeepSpeed) runs cold. The
example pipeline's run (tests/local/test_local_mode.py) shows a whole pipeline trained warm."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from refinery_operator.local.launcher import StageLauncher

from .conftest import make_corpus, stage_run, write_config

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="warm starts are local mode's default on Linux only")

WAIT_S = 300  # the fork server's first start imports torch, transformers and TRL
MODEL = {"config": {"hiddenSize": 32, "numHiddenLayers": 1, "numAttentionHeads": 2, "intermediateSize": 64},
         "vocabSize": 128}


def test_a_warm_stage_process_fails_exactly_as_a_cold_one(workspace, tmp_path):
    """An sft stage whose data file is missing fails at once: both ways, the same exit code and
    termination message, written where the process's own environment says."""
    outcomes = {}
    for name in ("cold", "warm"):
        folder = tmp_path / name
        config = write_config(folder / "sft.yaml", stage_run(workspace, "sft", "sft", data={"path": "no-such.jsonl"},
                                                             model=MODEL))
        env = {**os.environ, "REFINERY_TERMINATION_LOG": str(folder / "termination-log")}
        process = StageLauncher(warm=name == "warm").start(config, folder / "log", env)
        code = process.wait(timeout=WAIT_S)
        outcomes[name] = (code, json.loads((folder / "termination-log").read_text()))
    assert outcomes["warm"] == outcomes["cold"]
    assert outcomes["warm"][0] == 1 and "no-such.jsonl" in outcomes["warm"][1]["message"], outcomes
    text = (tmp_path / "warm" / "log").read_text()
    assert text.startswith("refinery-train: warm start, forked from local mode's fork server\n")
    assert "no-such.jsonl" in text  # the trainer's own log lines go to the attempt's log


def test_a_killed_warm_stage_reports_the_signal(workspace, tmp_path):
    make_corpus(workspace / "corpus.txt")
    run = stage_run(workspace, "pretrain", "pretrain", data={"path": "corpus.txt"}, model=MODEL,
                    training={"maxSteps": 100000})
    log = tmp_path / "log"
    process = StageLauncher(warm=True).start(write_config(tmp_path / "pretrain.yaml", run), log, dict(os.environ))
    deadline = time.monotonic() + WAIT_S
    while "effective batch size" not in (log.read_text() if log.exists() else ""):  # training
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    process.kill()
    assert process.wait(timeout=30) == -9  # what local mode reads as KilledBySIGKILL, an infrastructure failure
    assert log.read_text().startswith("refinery-train: warm start")


def test_a_stage_that_uses_deepspeed_starts_cold(workspace, tmp_path):
    """The fork server hides DeepSpeed, vLLM and Liger (transformers remembers at import that they are
    absent): a stage that uses one of them replaces its fork with a fresh interpreter."""
    run = stage_run(workspace, "sft", "sft", data={"path": "no-such.jsonl"}, model=MODEL)
    run["stage"]["deepspeed"] = {"zeroStage": 2}
    log = tmp_path / "log"
    env = {**os.environ, "REFINERY_TERMINATION_LOG": str(tmp_path / "termination-log")}
    process = StageLauncher(warm=True).start(write_config(tmp_path / "sft.yaml", run), log, env)
    assert process.wait(timeout=WAIT_S) == 1, log.read_text()
    lines = log.read_text().splitlines()
    assert lines[0] == ("refinery-train: cold start: the stage uses one of deepspeed, vllm, liger_kernel, "
                        "which the fork server does not load"), lines[0]
    assert "no-such.jsonl" in json.loads((tmp_path / "termination-log").read_text())["message"]
