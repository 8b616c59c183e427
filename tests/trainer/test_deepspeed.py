"""sft under `torchrun --nproc_per_node=2` with DeepSpeed ZeRO-2 and ZeRO-3 on CPU (gloo): it learns,
rank 0 writes a final model that loads with `from_pretrained` and starts the next stage, and a
killed ZeRO-3 run resumes from its newest complete checkpoint, whose marker was written only
after every rank had written its shards.

DeepSpeed JIT-builds one C++ op here (its shared-memory communication op, ~40 s with g++ on 2 cores) into
`$TORCH_EXTENSIONS_DIR` (default `~/.cache/torch_extensions`): cache that folder in CI.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from refinery_trainer import cli
from refinery_trainer.checkpoints import checkpoint_step, complete_checkpoints

from .conftest import FAVOURITE, read_json, sft_rows, stage_run, wait_for_marker, write_config, write_jsonl

pytestmark = pytest.mark.slow
pytest.importorskip("deepspeed")


def torchrun(config: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "refinery_trainer", "run", "--config", str(config)]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def failure(done: subprocess.CompletedProcess) -> str:
    """The lines of a failed torchrun's stderr worth reading (every rank prints its traceback)."""
    return "\n".join(line for line in done.stderr.splitlines() if "rror" in line or "refinery-train:" in line)[-3000:]


def sft_config(workspace: Path, pretrained: Path, zero: int, *, attempt: int = 1, max_steps: int = 40) -> Path:
    write_jsonl(workspace / "data" / "sft.jsonl", sft_rows())
    run = stage_run(workspace, "sft", "sft", data={"path": "data/sft.jsonl"}, from_="pretrain", attempt=attempt,
                    initModel=str(pretrained / "model"),
                    training={"maxSteps": max_steps, "saveSteps": 10, "batchSize": 4, "learningRate": 2e-3})
    run["stage"]["deepspeed"] = {"zeroStage": zero}
    return write_config(workspace / f"sft-{attempt}.yaml", run)


def completion_loss(model_dir: Path, rows: list[dict]) -> float:
    """Mean token loss of the completions given their prompts: what sft trains down."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    losses = []
    for row in rows:
        prompt = tokenizer(row["prompt"])["input_ids"]
        ids = tokenizer(row["prompt"] + row["completion"])["input_ids"]
        labels = [-100] * len(prompt) + ids[len(prompt):]
        with torch.no_grad():
            losses.append(model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item())
    return sum(losses) / len(losses)


def test_zero2_sft_learns_and_saves_a_loadable_model(pretrained, workspace):
    done = subprocess.run(torchrun(sft_config(workspace, pretrained, zero=2)), env=env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, failure(done)
    stage_dir = workspace / "p" / "sft"
    result = read_json(stage_dir / "result.json")
    assert result["steps"] == 40 and result["metrics"]["evalLoss"] < result["metrics"]["initialEvalLoss"] - 1.0
    # DeepSpeed really ran: each checkpoint holds one ZeRO optimizer shard per rank.
    assert len(list((stage_dir / "attempt-1/checkpoints/checkpoint-40").glob("global_step40/*optim_states.pt"))) == 2
    # The final model is the trained one, whole: far better on held-out rows than the one it started from.
    held_out = sft_rows(16, seed=1)
    assert completion_loss(stage_dir / "model", held_out) < completion_loss(pretrained / "model", held_out) - 1.0


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers (each in its own session: torchrun starts them with setsid)."""
    import psutil

    processes = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in processes:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(processes, timeout=30)
    proc.wait(timeout=30)


def test_killed_zero3_run_resumes_and_its_model_starts_the_next_stage(pretrained, workspace):
    stage_dir, max_steps = workspace / "p" / "sft", 200
    first = subprocess.Popen(torchrun(sft_config(workspace, pretrained, zero=3, max_steps=max_steps)), env=env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_marker(stage_dir, first, timeout_s=240)
    finally:
        kill_tree(first)  # torchrun and both ranks at once, as when a pod is deleted
    assert not (stage_dir / "result.json").exists()
    complete = complete_checkpoints(stage_dir)
    last_step = checkpoint_step(complete[0])
    assert last_step < max_steps - 50
    for path in complete:  # the marker came after every rank's files
        assert {f"rng_state_{r}.pth" for r in (0, 1)} <= {p.name for p in path.iterdir()}
        assert len(list(path.glob("global_step*/*optim_states.pt"))) == 2

    done = subprocess.run(torchrun(sft_config(workspace, pretrained, zero=3, attempt=2, max_steps=max_steps)),
                          env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, failure(done)
    progress = read_json(stage_dir / "progress.json")
    assert progress["phase"] == "Succeeded" and progress["attempt"] == 2
    assert progress["resumedFrom"]["step"] == last_step
    result = read_json(stage_dir / "result.json")
    assert result["steps"] == max_steps and result["metrics"]["evalLoss"] < result["metrics"]["initialEvalLoss"] - 1.0

    # ZeRO-3 shards the weights; model/ holds them gathered, and the next stage (reward) starts from it.
    held_out = sft_rows(16, seed=1)
    assert completion_loss(stage_dir / "model", held_out) < completion_loss(pretrained / "model", held_out) - 1.0
    write_jsonl(workspace / "data" / "pairs.jsonl", preference_rows())
    reward = stage_run(workspace, "reward", "reward", data={"path": "data/pairs.jsonl"}, from_="sft",
                       initModel=str(stage_dir / "model"), training={"maxSteps": 20, "saveSteps": 20})
    assert cli.main(["run", "--config", str(write_config(workspace / "reward.yaml", reward))]) == 0
    metrics = read_json(workspace / "p" / "reward" / "result.json")["metrics"]
    # It learns from the gathered weights: held-out loss falls. Accuracy over 12 held-out pairs after
    # 20 steps moves by a pair or two either way with the sft model's features, so it is not the signal.
    assert metrics["evalLoss"] < metrics["initialEvalLoss"], metrics


def preference_rows(n: int = 120, seed: int = 0) -> list[dict]:
    """The sft lookup task as pairs: the right favourite thing over a wrong one."""
    r = random.Random(seed)
    rows = []
    for _ in range(n):
        name = r.choice(sorted(FAVOURITE))
        wrong = r.choice([t for t in set(FAVOURITE.values()) if t != FAVOURITE[name]])
        rows.append({"prompt": f"what does {name} like?\n", "chosen": f"{name} likes {FAVOURITE[name]}.",
                     "rejected": f"{name} likes {wrong}."})
    return rows
