"""Local mode end to end: `refinery run` takes the example pipeline to Succeeded, every stage
learns what it trains for, the summary plots every stage's curves, and a killed run resumes from
its last complete checkpoint."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from refinery_operator.api.run import CHECKPOINT_MARKER
from refinery_operator.local.summary import read_history

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "tiny-chat.yaml"

pytestmark = pytest.mark.slow


def refinery(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "refinery_operator.cli", *args], env=env, **kwargs)


def stage_of(status: dict, name: str) -> dict:
    return next(s for s in status["stages"] if s["name"] == name)


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("example")
    started = time.monotonic()
    proc = refinery("run", str(EXAMPLE), "--workdir", str(workdir), "--quiet",
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=900)
    elapsed = time.monotonic() - started
    status = json.loads((workdir / "tiny-chat" / "status.json").read_text())
    print(f"\nexample pipeline: {elapsed:.1f} s\n{out}")
    return proc.returncode, out, status, workdir


def test_example_pipeline_succeeds(example_run):
    code, out, status, _ = example_run
    assert code == 0, out
    assert status["phase"] == "Succeeded"
    assert [s["phase"] for s in status["stages"]] == ["Succeeded"] * 4
    assert "pipeline Succeeded" in out and "STAGE" in out  # the summary table


def test_every_stage_learns(example_run):
    _, out, status, _ = example_run
    for name in ("pretrain", "sft"):
        metrics = stage_of(status, name)["metrics"]
        assert metrics["evalLoss"] < metrics["initialEvalLoss"], (name, metrics)
    assert stage_of(status, "reward")["metrics"]["evalAccuracy"] >= 0.8
    rlhf = stage_of(status, "rlhf")["metrics"]
    assert rlhf["meanReward"] > rlhf["baselineMeanReward"], rlhf
    assert "kl" in rlhf


def test_outputs_are_handed_from_stage_to_stage(example_run):
    _, _, status, workdir = example_run
    root = workdir / "tiny-chat"
    for name in ("pretrain", "sft", "reward", "rlhf"):
        stage = stage_of(status, name)
        assert stage["output"] == str(root / name / "model")
        assert (root / name / "model" / "config.json").exists()
        assert json.loads((root / name / "result.json").read_text())["metrics"] == stage["metrics"]
        assert stage["checkpoints"] >= 1 and stage["lastCheckpoint"]["step"] >= 1
    assert stage_of(status, "sft")["inputs"] == {"model": str(root / "pretrain" / "model")}
    assert stage_of(status, "rlhf")["inputs"] == {
        "model": str(root / "sft" / "model"), "rewardModel": str(root / "reward" / "model"),
    }


def test_a_second_run_keeps_finished_stages(example_run):
    _, _, status, workdir = example_run
    proc = refinery("run", str(EXAMPLE), "--workdir", str(workdir), "--quiet", stdout=subprocess.PIPE, text=True)
    proc.communicate(timeout=120)
    again = json.loads((workdir / "tiny-chat" / "status.json").read_text())
    assert proc.returncode == 0
    assert [s["attempt"] for s in again["stages"]] == [s["attempt"] for s in status["stages"]]


def test_the_summary_plots_every_stages_curves(example_run):
    _, out, _, workdir = example_run
    png = workdir / "tiny-chat" / "summary.png"
    assert f"plots: {png}" in out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height) == (1280, 760)  # four panels, two per row, at 100 dpi
    assert len(data) > 30_000  # curves and text, not an empty canvas

    # What the panels are drawn from: every training log of every stage, at full resolution.
    root = workdir / "tiny-chat"
    assert [step for step, _ in read_history(root / "pretrain")["loss"]] == [25, 50, 75, 100, 125, 150]
    assert [step for step, _ in read_history(root / "sft")["loss"]] == list(range(50, 501, 50))
    assert [step for step, _ in read_history(root / "reward")["eval_accuracy"]] == [0, 300]
    rlhf = read_history(root / "rlhf")
    assert [step for step, _ in rlhf["reward"]] == [step for step, _ in rlhf["kl"]] == [25, 50, 75, 100, 125, 150]


def pretrain_only(tmp_path: Path, max_steps: int, save_steps: int) -> Path:
    manifest = yaml.safe_load(EXAMPLE.read_text())
    stage = manifest["spec"]["stages"][0]
    stage["training"].update(maxSteps=max_steps, saveSteps=save_steps)
    manifest["spec"]["stages"] = [stage]
    path = tmp_path / "pretrain-only.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def complete_checkpoints(stage_dir: Path) -> list[int]:
    return sorted(int(m.parent.name.split("-")[1]) for m in stage_dir.glob(f"attempt-*/checkpoints/checkpoint-*/{CHECKPOINT_MARKER}"))


def test_killed_run_resumes_from_the_last_complete_checkpoint(tmp_path):
    manifest = pretrain_only(tmp_path, max_steps=400, save_steps=20)
    workdir = tmp_path / "work"
    stage_dir = workdir / "tiny-chat" / "pretrain"
    args = ("run", str(manifest), "--workdir", str(workdir), "--data-root", str(EXAMPLE.parent), "--quiet")
    proc = refinery(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while len(complete_checkpoints(stage_dir)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole run, as a crashed machine would
    proc.wait()
    done = complete_checkpoints(stage_dir)
    assert len(done) >= 2, "the run ended before checkpointing twice"
    assert max(done) < 400, "the run finished before it could be killed"

    # A partial write newer than any complete checkpoint: it must never be resumed from.
    partial = stage_dir / "attempt-1" / "checkpoints" / f"checkpoint-{max(done) + 10}"
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"truncated")

    proc = refinery(*args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    stage = stage_of(json.loads((workdir / "tiny-chat" / "status.json").read_text()), "pretrain")
    assert stage["phase"] == "Succeeded" and stage["attempt"] == 2
    assert stage["resumedFrom"]["step"] == max(done)
    assert stage["resumedFrom"]["path"].endswith(f"attempt-1/checkpoints/checkpoint-{max(done)}")
    assert stage["step"] == 400


@pytest.mark.parametrize(
    ("what", "data", "expected"),
    [
        ("missing file", None, "no-such-file.txt"),
        ("wrong columns", '{"prompt": "2+2=", "answer": "4"}\n', "completion"),
    ],
)
def test_bad_data_fails_the_stage_with_a_clear_message(tmp_path, what, data, expected):
    manifest = yaml.safe_load(EXAMPLE.read_text())
    stage = manifest["spec"]["stages"][1]  # sft, from pretrain: start it from a config instead
    stage.pop("from")
    stage["model"] = manifest["spec"]["stages"][0]["model"]
    stage["retries"] = {"application": 0}
    if data is None:
        stage["data"] = {"path": "no-such-file.txt"}
    else:
        (tmp_path / "bad.jsonl").write_text(data * 20)
        stage["data"] = {"path": "bad.jsonl"}
    manifest["spec"]["stages"] = [stage]
    path = tmp_path / "bad-data.yaml"
    path.write_text(yaml.safe_dump(manifest))

    proc = refinery("run", str(path), "--workdir", str(tmp_path / "work"), "--quiet",
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    status = json.loads((tmp_path / "work" / "tiny-chat" / "status.json").read_text())
    failure = stage_of(status, "sft")["lastFailure"]
    assert failure["class"] == "Application" and expected in failure["message"], failure
    assert status["phase"] == "Failed"
    assert expected in out  # the runner tells the user too
