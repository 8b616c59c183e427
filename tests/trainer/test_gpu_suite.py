"""benchmarks/gpu_suite.py without a GPU: --help, a clear refusal, and every part's code path on
tiny models on the CPU (`--device cpu`), ending with its table and one JSON line."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.tools import REPO

SUITE = REPO / "benchmarks" / "gpu_suite.py"


def load_suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_suite(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(SUITE), *args], capture_output=True, text=True, env=env, timeout=600)


def test_help_needs_no_gpu():
    done = run_suite("--help")
    assert done.returncode == 0 and "--parts" in done.stdout and "--device" in done.stdout


def test_refuses_clearly_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = run_suite("--parts", "pretrain")
    assert done.returncode == 2 and "needs a CUDA GPU and found none" in done.stderr


def test_table_shows_absent_figures_and_targets():
    text = load_suite().table({"pretrain": {"refinery_tokens_per_second": 12345.6, "mfu": None, "ratio": 0.98}})
    lines = text.splitlines()
    assert lines[1].split() == ["pretrain", "refinery_tokens_per_second", "12,346"]
    assert lines[2].split() == ["pretrain", "mfu", "-", ">=", "0.45"]  # no peak on a CPU: absent, not 0
    assert lines[3].split() == ["pretrain", "ratio", "0.980", ">=", "0.97"]


@pytest.mark.slow  # about a minute on a CPU: five stages and a plain loop
def test_every_part_runs_on_tiny_models_on_a_cpu(tmp_path):
    done = run_suite("--device", "cpu", "--steps", "2", "--workdir", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["tiny"] and figures["device"] == "cpu" and figures["precision"] == "fp32"
    assert figures["pretrain"]["refinery_tokens_per_second"] > 0 and figures["pretrain"]["plain_tokens_per_second"] > 0
    assert figures["pretrain"]["mfu"] is None
    assert figures["sft"]["packed_tokens_per_second"] > 0 and figures["sft"]["padded_tokens_per_second"] > 0
    assert figures["rl"]["rloo_step_s"] > 0 and 0 < figures["rl"]["rloo_generation_share"] < 1
    assert "pretrain  ratio" in done.stdout  # the table before the JSON line
