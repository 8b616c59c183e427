"""The second example, end to end in local mode: `refinery run examples/tiny-math.yaml` trains
pretrain -> sft -> rlhf with verifier rewards (no reward stage) -> eval -> export, and RL raises
held-out exact match far above the sft model's — by ground truth, not by a reward model's opinion.
The README's figures for it are the ones checked here."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from .conftest import refinery

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "tiny-math.yaml"


def readme_figures() -> dict[str, float]:
    """The README's line `**tiny-math, held-out exact match (greedy), sft → rlhf:** 0.56 → 0.98 ...; 0.58 → 0.97 ...`."""
    text = (REPO / "README.md").read_text()
    line = re.search(r"^\*\*tiny-math, held-out exact match \(greedy\), sft → rlhf:\*\*(.*)$", text, re.M).group(1)
    numbers = [float(x) for x in re.findall(r"\d\.\d+", line)]
    return dict(zip(("sftHeldOut", "rlhfHeldOut", "sftEval", "rlhfEval"), numbers))


def test_rl_on_verifier_rewards_beats_sft_on_held_out_answers(tmp_path):
    proc = refinery("run", str(EXAMPLE), "--workdir", str(tmp_path), "--quiet",
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=1500)
    print(out)
    assert proc.returncode == 0, out
    status = json.loads((tmp_path / "tiny-math" / "status.json").read_text())
    stages = {s["name"]: s for s in status["stages"]}
    assert [s["phase"] for s in stages.values()] == ["Succeeded"] * 5  # pretrain sft rlhf eval export
    rlhf, scores = stages["rlhf"]["metrics"], stages["eval"]["metrics"]
    figures = {"sftHeldOut": rlhf["baselineHeldOutExactMatch"], "rlhfHeldOut": rlhf["heldOutExactMatch"],
               "sftEval": scores["sft.exactMatch"], "rlhfEval": scores["rlhf.exactMatch"]}
    print(figures)
    assert figures["rlhfHeldOut"] >= figures["sftHeldOut"] + 0.3 and figures["rlhfEval"] >= figures["sftEval"] + 0.3
    # Each reward on its own; the held-out watch found nothing wrong, and said what it checked.
    assert {"rewards/exactMatch", "rewards/format", "heldOutRewards/exactMatch"} <= rlhf.keys()
    hacking = next(c for c in status["conditions"] if c["type"] == "RewardHacking")
    assert hacking["status"] == "False" and "held-out exact match" in hacking["message"], hacking
    # The README's figures are this run's (to two decimals, as printed there; a CPU's kernels may move one answer).
    for name, value in readme_figures().items():
        assert abs(figures[name] - value) <= 0.02, (name, figures[name], value)
