"""Pretraining on a corpus bigger than memory should be: peak RSS and time to the first step.

    python benchmarks/big_dataset.py                         # 256 MB and 1024 MB of shards
    python benchmarks/big_dataset.py --sizes-mb 64 512 --baseline-mb 48

Generated JSONL shards (64 MB each, short documents from a small grammar) go to `--root`
(default /tmp/refinery-big-dataset, never the repository). For each corpus size, one tiny-model
pretrain stage runs as its own `refinery-train run` process, twice:

- attempt 1: `--steps` steps from scratch — the corpus is tokenized once into the stage folder
  (sources/corpus.py), then read as memory-mapped blocks;
- attempt 2: `--steps` more, resuming from attempt 1's last checkpoint — the tokens are found
  complete, nothing is tokenized again.

Reported per run: peak RSS of the process (`wait4`'s ru_maxrss), seconds from process start to
its first optimiser step (the first progress record with a step past the resume point), and
wall seconds. Side by side, the baseline: the in-memory path (every document read, tokenized and
packed in Python lists, the path for a file under 64 MiB) and the streaming path on the same
`--baseline-mb` corpus. Every run evaluates on the same small held-out file (`evalPath`), so
evaluation costs the same everywhere. Targets: peak RSS flat in corpus size (`rss_ratio_large_to_small` near
1, against a corpus ratio of 4), and a resumed attempt's first step far sooner than attempt 1's
(`resume_first_step_ratio` well below 1: no re-tokenization). Timings on a shared machine are
noisy; RSS is not. The last stdout line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
VERBS = ["likes", "sees", "helps", "calls", "finds", "follows", "paints"]
THINGS = ["the cat", "the dog", "a red ball", "the old tree", "a blue car", "the green hat", "a small boat"]
SHARD_MB = 64
MODEL = {"config": {"hiddenSize": 64, "numHiddenLayers": 2, "numAttentionHeads": 4, "intermediateSize": 128,
                    "maxPositionEmbeddings": 128}, "vocabSize": 512}


def make_corpus(folder: Path, size_mb: int, seed: int = 0) -> Path:
    """`size_mb` of JSONL shards in `folder` (reused when already there)."""
    done = folder / ".complete"
    if done.is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    r = random.Random(seed)
    pool = [json.dumps({"text": " ".join(f"{r.choice(NAMES)} {r.choice(VERBS)} {r.choice(THINGS)}."
                                         for _ in range(r.randint(3, 12)))}) + "\n" for _ in range(20000)]
    left, shard = size_mb << 20, 0
    while left > 0:
        target = min(left, SHARD_MB << 20)
        with open(folder / f"part-{shard:05d}.jsonl", "w") as f:
            written = 0
            while written < target:
                chunk = "".join(r.choices(pool, k=2000))
                f.write(chunk)
                written += len(chunk)
        left -= written
        shard += 1
    done.write_text("")
    return folder


def one_file(folder: Path, path: Path) -> Path:
    """The same corpus as one .txt file (the in-memory path's input)."""
    if not path.is_file():
        with open(path, "w") as out:
            for shard in sorted(folder.glob("*.jsonl")):
                with open(shard) as f:
                    for line in f:
                        out.write(json.loads(line)["text"] + "\n\n")
    return path


def make_eval_file(path: Path) -> Path:
    """A small held-out file (another seed), the same for every run: evaluation costs the same."""
    if not path.is_file():
        r = random.Random(12345)
        path.write_text("\n\n".join(" ".join(f"{r.choice(NAMES)} {r.choice(VERBS)} {r.choice(THINGS)}."
                                              for _ in range(r.randint(3, 12))) for _ in range(400)) + "\n")
    return path


def run_attempt(work: Path, data: Path, attempt: int, steps: int, save_steps: int, eval_path: Path) -> dict:
    """One `refinery-train run` process; its peak RSS, time to first step and wall time."""
    stage_dir = work / "p" / "pretrain"
    progress = stage_dir / "progress.json"
    run = {
        "pipeline": "p", "attempt": attempt, "stageDir": str(stage_dir), "dataRoot": str(work),
        "reporter": {"kind": "file", "path": str(progress)}, "progressIntervalS": 0.05,
        "stage": {"name": "pretrain", "type": "pretrain", "model": MODEL, "data": {"path": str(data), "evalPath": str(eval_path)},
                  "training": {"maxSteps": steps, "batchSize": 8, "seqLen": 128, "saveSteps": save_steps,
                               "loggingSteps": 1, "learningRate": 3e-3}},
    }
    config = work / f"attempt-{attempt}.yaml"
    config.write_text(yaml.safe_dump(run))
    resumed_at = 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "REFINERY_TERMINATION_LOG": str(work / "termination-log")}
    started = time.monotonic()
    log = open(work / f"attempt-{attempt}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "refinery_trainer", "run", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    first_step = None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # not poll(): wait4 also gives the child's rusage
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            break
        try:
            record = json.loads(progress.read_text())
        except (OSError, ValueError):
            record = {}
        if record.get("attempt") == attempt:
            resumed_at = (record.get("resumedFrom") or {}).get("step", resumed_at)
            if first_step is None and record.get("step", 0) > resumed_at:
                first_step = time.monotonic() - started
        time.sleep(0.02)
    log.close()
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"attempt {attempt} failed: see {work / f'attempt-{attempt}.log'}")
    return {"peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "first_step_s": round(first_step, 2) if first_step is not None else None, "wall_s": round(wall, 2),
            "resumed_from": resumed_at}


def measure(name: str, data: Path, root: Path, steps: int) -> dict:
    work = root / "work" / name.replace(" ", "-")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    eval_path = make_eval_file(root / "eval.txt")
    first = run_attempt(work, data, 1, steps, save_steps=steps, eval_path=eval_path)
    second = run_attempt(work, data, 2, steps * 2, save_steps=steps, eval_path=eval_path)
    print(f"{name:>22}: attempt 1 rss {first['peak_rss_mb']:>7} MB, first step {first['first_step_s']:>7}s | "
          f"resumed rss {second['peak_rss_mb']:>7} MB, first step {second['first_step_s']:>6}s", flush=True)
    return {"attempt1": first, "resumed": second}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes-mb", type=int, nargs=2, default=[256, 1024], help="small and large corpus sizes")
    parser.add_argument("--baseline-mb", type=int, default=48, help="corpus of the in-memory baseline (< 64)")
    parser.add_argument("--steps", type=int, default=10, help="optimiser steps per attempt")
    parser.add_argument("--root", type=Path, default=Path("/tmp/refinery-big-dataset"))
    args = parser.parse_args()
    small_mb, large_mb = args.sizes_mb
    figures: dict = {"sizes_mb": [small_mb, large_mb], "baseline_mb": args.baseline_mb, "steps": args.steps}

    baseline = make_corpus(args.root / f"corpus-{args.baseline_mb}mb", args.baseline_mb)
    figures["in_memory"] = measure(f"in-memory {args.baseline_mb} MB", one_file(baseline, args.root / "baseline.txt"),
                                   args.root, args.steps)
    figures["streamed_baseline"] = measure(f"streamed {args.baseline_mb} MB", baseline, args.root, args.steps)
    for label, size in (("small", small_mb), ("large", large_mb)):
        figures[label] = measure(f"streamed {size} MB", make_corpus(args.root / f"corpus-{size}mb", size, seed=1),
                                 args.root, args.steps)

    rss = lambda key: figures[key]["attempt1"]["peak_rss_mb"]  # noqa: E731
    figures["rss_ratio_large_to_small"] = round(rss("large") / rss("small"), 3)
    figures["rss_ratio_streamed_to_in_memory"] = round(rss("streamed_baseline") / rss("in_memory"), 3)
    figures["resume_first_step_ratio"] = round(
        figures["large"]["resumed"]["first_step_s"] / figures["large"]["attempt1"]["first_step_s"], 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
