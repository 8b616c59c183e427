"""examples/notebook.py, run as a user runs it (`python examples/notebook.py`): it builds a cut-down
tiny-chat (pretrain 100 steps, sft 50) with the typed models, runs it in local mode through
`Client.local`, waits with a progress bar and prints the metrics tables. Checked: the run
succeeded, both tables have their logged rows, and the losses went down.

While it trains, the test suspends and resumes the run from another process, as a user would with
`refinery suspend|resume --local-workdir`: the suspended run stopped after a checkpoint, the
notebook's `wait` kept waiting, and pretrain's second attempt resumed from that checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "notebook.py"
NAME = "tiny-chat-notebook"
VERBS = [sys.executable, "-m", "refinery_operator.cli"]


def test_the_notebook_trains_and_prints_falling_losses(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "REFINERY_METRICS_PORT"}
    env |= {"REFINERY_WORKDIR": str(tmp_path / "runs"), "HF_HUB_OFFLINE": "1"}
    notebook = subprocess.Popen([sys.executable, str(NOTEBOOK)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    where = ["--local-workdir", str(tmp_path / "runs")]
    try:
        out, err = suspend_and_resume(notebook, tmp_path / "runs" / NAME, where)
    finally:  # a failed test leaves no training behind: the run's `refinery run` has a session of its own
        if notebook.poll() is None:
            notebook.kill()
        if notebook.returncode != 0:
            subprocess.run([*VERBS, "delete", NAME, *where], capture_output=True, timeout=150)
    lines = out.splitlines()
    assert f"pipeline {NAME}: Succeeded" in lines
    assert f"{NAME}:" in err and "Suspended" in err and "Succeeded" in err  # the progress bar
    pretrain, sft = table_after(lines, "pretrain metrics"), table_after(lines, "sft metrics")
    losses = [r["loss"] for r in pretrain if r["loss"] is not None]
    assert [r["step"] for r in pretrain if r["loss"] is not None][-3:] == [80, 90, 100], pretrain
    assert losses[-1] < 0.7 * losses[0], pretrain
    sft_losses = [r["loss"] for r in sft if r["loss"] is not None]
    assert len(sft_losses) == 5 and sft_losses[-1] < sft_losses[0], sft
    eval_losses = [r["eval_loss"] for r in sft if r["eval_loss"] is not None]
    assert eval_losses[-1] < 0.5 * eval_losses[0], sft  # held out: before training, then after
    assert "PipelineSucceeded all 2 stages succeeded" in lines  # the events
    assert (tmp_path / "runs" / NAME / "sft" / "model").is_dir()


def suspend_and_resume(notebook: subprocess.Popen, root: Path, where: list[str]) -> tuple[str, str]:
    """`refinery suspend` once pretrain trained 5 steps, `refinery resume`; the notebook's output."""
    deadline = time.monotonic() + 120
    while pretrain_status(root).get("step", 0) < 5 and time.monotonic() < deadline and notebook.poll() is None:
        time.sleep(0.1)
    suspended = subprocess.run([*VERBS, "suspend", NAME, *where], capture_output=True, text=True, timeout=150)
    assert (suspended.returncode, suspended.stdout) == (0, f"trainingpipeline.refinery.dev/{NAME} suspended\n"), suspended.stderr
    got = json.loads(subprocess.run([*VERBS, "get", NAME, "-o", "json", *where], capture_output=True, text=True,
                                    timeout=60, check=True).stdout)
    assert (got["spec"]["suspend"], got["status"]["phase"]) == (True, "Suspended")
    saved = sorted(int(p.name.split("-")[1]) for p in root.glob("pretrain/attempt-1/checkpoints/checkpoint-*"))
    assert saved and 5 <= saved[-1] < 100, saved  # SIGTERM: a checkpoint at the step reached, then the stage stopped
    time.sleep(1)
    assert notebook.poll() is None  # its wait() goes on through the suspension
    resumed = subprocess.run([*VERBS, "resume", NAME, *where], capture_output=True, text=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    out, err = notebook.communicate(timeout=300)
    assert notebook.returncode == 0, out[-3000:] + err[-3000:]
    pretrain = pretrain_status(root)
    assert (pretrain["attempt"], pretrain["resumedFrom"]["step"]) == (2, saved[-1]), pretrain
    return out, err


def pretrain_status(root: Path) -> dict:
    try:
        status = json.loads((root / "status.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return next((s for s in status.get("stages", []) if s["name"] == "pretrain"), {})


def table_after(lines: list[str], title: str) -> list[dict[str, float | None]]:
    """The rows of the table printed under `title` (pandas' to_string: a header, then rows; NaN -> None)."""
    start = lines.index(title) + 1
    header = lines[start].split()
    rows = []
    for line in lines[start + 1:]:
        cells = line.split()
        if len(cells) != len(header) or not cells[0].isdigit():
            break
        rows.append({k: (None if v == "NaN" else float(v)) for k, v in zip(header, cells)})
    return rows
