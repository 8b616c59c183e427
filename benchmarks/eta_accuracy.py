"""How good the ETA is: predicted against actual time left, at 25, 50 and 75 % of each stage.

    python benchmarks/eta_accuracy.py                       # examples/tiny-chat.yaml, 3 runs
    python benchmarks/eta_accuracy.py --runs 1 examples/tiny-math.yaml

Runs the pipeline in local mode (`refinery run --quiet`) and reads its status.json as it
changes, every 0.1 s: each stage's `estimatedRemainingSeconds` (the trainer's, from its pace
since its first step) and the pipeline's (the longest chain of remaining stages, later stages
from a borrowed pace: sdk/refinery/core/eta.py). Afterwards the actual time left
is known: a stage's from its `completionTime` (the final save and evaluation after the last step
included), the pipeline's from the moment its status said Succeeded. At the first status at or
past 25/50/75 % of a stage's steps (of the pipeline's wall time for the pipeline), the error is
predicted - actual, in seconds and as a share of the actual. Negative: the estimate was too
short. The last stdout line is one JSON object of the figures (mean over runs).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKS = (0.25, 0.5, 0.75)


def when(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def watch(manifest: Path, workdir: Path) -> tuple[list[tuple[float, dict]], float]:
    """Every distinct status.json while the pipeline runs, with the wall time it was read."""
    log = (workdir / "refinery-run.log").open("w")  # a file, not a pipe nobody reads while it runs
    proc = subprocess.Popen([shutil.which("refinery") or "refinery", "run", str(manifest), "--workdir", str(workdir),
                             "--quiet"], stdout=log, stderr=subprocess.STDOUT, text=True)
    seen: list[tuple[float, dict]] = []
    last = None
    while proc.poll() is None:
        for path in workdir.glob("*/status.json"):
            try:
                text = path.read_text()
                status = json.loads(text)
            except (OSError, ValueError):
                continue  # caught mid-rewrite
            if text != last:
                last = text
                seen.append((time.time(), status))
        time.sleep(0.1)
    log.close()
    if proc.returncode != 0:
        sys.exit(f"the pipeline failed: {(workdir / 'refinery-run.log').read_text()[-2000:]}")
    return seen, time.time()


def errors(seen: list[tuple[float, dict]]) -> dict[str, dict[str, float]]:
    """{"<stage>" | "pipeline": {"25%": relative error, ...}} for one run."""
    final = seen[-1][1]
    out: dict[str, dict[str, float]] = {}
    for stage in final["stages"]:
        name, end = stage["name"], stage.get("completionTime")
        if not stage.get("maxSteps") or not end:
            continue
        row = {}
        for mark in MARKS:
            at = next(((t, s) for t, st in seen for s in st["stages"] if s["name"] == name and s.get("phase") == "Running"
                       and s.get("progress", 0) >= mark and s.get("estimatedRemainingSeconds") is not None), None)
            if at is not None:
                actual = max(0.1, when(end) - at[0])
                row[f"{mark:.0%}"] = round((at[1]["estimatedRemainingSeconds"] - actual) / actual, 3)
                row[f"{mark:.0%} s"] = (round(at[1]["estimatedRemainingSeconds"], 1), round(actual, 1))
        out[name] = row
    start = next(t for t, st in seen if st.get("phase") == "Running")
    done = next(t for t, st in seen if st.get("phase") == "Succeeded")
    row = {}
    for mark in MARKS:
        t_mark = start + mark * (done - start)
        at = next(((t, st) for t, st in seen if t >= t_mark and st.get("estimatedRemainingSeconds") is not None), None)
        if at is not None:
            actual = max(0.1, done - at[0])
            row[f"{mark:.0%}"] = round((at[1]["estimatedRemainingSeconds"] - actual) / actual, 3)
            row[f"{mark:.0%} s"] = (at[1]["estimatedRemainingSeconds"], round(actual, 1))
    out["pipeline"] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", nargs="?", default=str(REPO / "examples" / "tiny-chat.yaml"))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="refinery-eta-") as tmp:
            seen, _ = watch(Path(args.manifest), Path(tmp))
            runs.append(errors(seen))
        print(f"run {i + 1}: " + json.dumps(runs[-1]), file=sys.stderr)
    names = list(runs[0])
    print(f"{'':<10}" + "".join(f"{m:>22.0%}" for m in MARKS))
    summary: dict[str, dict[str, float]] = {}
    for name in names:
        cells, summary[name] = [], {}
        for mark in MARKS:
            key = f"{mark:.0%}"
            rel = [r[name][key] for r in runs if key in r.get(name, {})]
            pairs = [r[name][f"{key} s"] for r in runs if key in r.get(name, {})]
            if not rel:
                cells.append(f"{'-':>22}")
                continue
            summary[name][key] = round(statistics.mean(rel), 3)
            predicted, actual = statistics.mean(p for p, _ in pairs), statistics.mean(a for _, a in pairs)
            cells.append(f"{predicted:>7.1f} s vs {actual:>5.1f} s{rel_text(summary[name][key])}")
        print(f"{name:<10}" + "".join(cells))
    print(json.dumps({"manifest": Path(args.manifest).name, "runs": args.runs, "relative_error": summary}))


def rel_text(rel: float) -> str:
    return f" ({rel:+.0%})".rjust(8)


if __name__ == "__main__":
    main()
