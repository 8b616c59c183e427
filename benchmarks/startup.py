"""Start-up and training time of each stage of the example pipeline, this checkout against a baseline.

    python benchmarks/startup.py                          # baseline: main's 7cb8c0a (cold starts), then this checkout
    python benchmarks/startup.py --baseline 7cb8c0a --runs 2
    python benchmarks/startup.py --baseline none          # this checkout only

Each checkout runs `refinery run examples/tiny-chat.yaml` (local mode, its own example manifest
and code: the baseline is `git archive`d into a temporary folder and put first on PYTHONPATH, so
the same virtualenv and packages serve both). Per stage process:

- start-up: from the moment local mode wrote the attempt's config (`.runs/<stage>-1.json`, just
  before it starts the process: a fresh interpreter, or a fork of the warm server) to the
  trainer's "effective batch size" log line, written in `on_train_begin` just before the first
  optimiser step: imports, data, tokenizer and model loading, the evaluation before training;
- training: from there to the stage's last log line (steps, checkpoints, final evaluation, save).

`pipeline_s` is the wall time of the whole `refinery run`. Checkouts alternate when `--runs` > 1
(baseline, current, current, baseline …) so a shared machine's drift hits both; figures are
medians. Stage processes get OMP_NUM_THREADS=1 (`--threads`): on a loaded machine, torch's
threads spin-wait on each other and a step takes 30x longer. Say how loaded the machine was when quoting them (`load_average` is printed). The last
stdout line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("pretrain", "sft", "reward", "rlhf")
FIRST_STEP = "effective batch size"
SHOWN_METRICS = ("tokensPerSecond", "mfu", "evalLoss", "evalAccuracy", "baselineMeanReward", "meanReward")
THREADS = 1  # torch threads per stage process (--threads): on a shared machine more threads spin and wait
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")

def checkout(commit: str, into: Path) -> Path:
    """The tree of `commit` in `into` (git archive: no worktree registered in the repository)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def log_times(path: Path) -> list[tuple[float, str]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        m = LOG_TIME.match(line)
        if m:
            out.append((datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp(), line))
    return out


def run_pipeline(tree: Path, work: Path) -> dict:
    work.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree / "operator"), str(tree / "trainer")])}
    if THREADS:
        env["OMP_NUM_THREADS"] = str(THREADS)
    begin = time.time()
    done = subprocess.run([sys.executable, "-m", "refinery_operator.cli", "run", "examples/tiny-chat.yaml",
                           "--workdir", str(work / "runs"), "--metrics-port", "0", "--quiet"],
                          cwd=tree, env=env, capture_output=True, text=True)
    pipeline_s = time.time() - begin
    if done.returncode != 0:
        raise SystemExit(f"{tree}: refinery run failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    runs = work / "runs" / "tiny-chat" / ".runs"
    stages = {}
    for stage in STAGES:
        start = (runs / f"{stage}-1.json").stat().st_mtime
        times = log_times(runs / f"{stage}-1.log")
        first = next(t for t, line in times if FIRST_STEP in line)
        stages[stage] = {"startup_s": first - start, "training_s": times[-1][0] - first}
    status = json.loads((work / "runs" / "tiny-chat" / "status.json").read_text())
    metrics = {s["name"]: s.get("metrics", {}) for s in status["stages"]}
    return {"pipeline_s": pipeline_s, "stages": stages, "metrics": metrics}


def median_of(results: list[dict]) -> dict:
    return {
        "pipeline_s": statistics.median(r["pipeline_s"] for r in results),
        "stages": {s: {k: statistics.median(r["stages"][s][k] for r in results) for k in ("startup_s", "training_s")}
                   for s in STAGES},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="7cb8c0a", help="commit to compare with, or `none` (default: 7cb8c0a)")
    parser.add_argument("--runs", type=int, default=1, help="pipeline runs per checkout (default 1)")
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS of the stage processes (default 1; 0 leaves it unset, as `refinery run` does)")
    args = parser.parse_args(argv)
    global THREADS
    THREADS = args.threads

    with tempfile.TemporaryDirectory(prefix="refinery-startup-") as tmp:
        tmp = Path(tmp)
        trees = {"current": REPO}
        if args.baseline != "none":
            trees = {"baseline": checkout(args.baseline, tmp / "baseline"), **trees}
        results: dict[str, list[dict]] = {name: [] for name in trees}
        for i in range(args.runs):
            order = list(trees) if i % 2 == 0 else list(reversed(trees))
            for name in order:
                results[name].append(run_pipeline(trees[name], tmp / f"{name}-{i}"))
    summary = {name: median_of(runs) for name, runs in results.items()}

    print(f"{'stage':<10}" + "".join(f"{name + ' start-up':>20}{name + ' training':>20}" for name in summary))
    for stage in STAGES:
        print(f"{stage:<10}" + "".join(f"{s['stages'][stage]['startup_s']:>19.1f}s{s['stages'][stage]['training_s']:>19.1f}s"
                                       for s in summary.values()))
    print(f"{'pipeline':<10}" + "".join(f"{s['pipeline_s']:>19.1f}s{'':>20}" for s in summary.values()))
    for name, runs in results.items():
        shown = {stage: {k: round(v, 4) for k, v in m.items() if k in SHOWN_METRICS} for stage, m in runs[-1]["metrics"].items()}
        print(f"{name} final metrics: {json.dumps(shown)}")
    figures = {"runs": args.runs, "baseline": args.baseline, "threads": args.threads, "load_average": os.getloadavg(), **summary}
    if "baseline" in summary:
        figures["pipeline_speedup"] = summary["baseline"]["pipeline_s"] / summary["current"]["pipeline_s"]
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
