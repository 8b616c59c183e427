"""Run examples/tiny-math.yaml with several seeds; held-out exact match of sft vs rlhf, mean ± sd.

    python scripts/tiny_math_seeds.py                         # seeds 1 2 3, under runs/tiny-math-seeds
    python scripts/tiny_math_seeds.py --seeds 1 2 3 4 5 --workdir /tmp/seeds
    python scripts/tiny_math_seeds.py --set rlhf.rl.algorithm=rloo --set rlhf.rl.lossType=null

Each seed is a whole pipeline of its own (`training.seed` set on every stage that trains, so
pretraining, sft and RL all differ), run in local mode (`refinery run`). Two figures per model:
- the rlhf stage's greedy exact match on its held-out prompts (`data.evalPath`), before RL
  (`baselineHeldOutExactMatch`, i.e. the sft model) and after (`heldOutExactMatch`);
- the eval stage's exact match on 128 other held-out prompts (`sft.exactMatch`, `rlhf.exactMatch`).
Prints a table, then one line of JSON with every figure (the last line, for scripts).
A finished seed's pipeline is kept: running the script again reuses its stages.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "examples" / "tiny-math.yaml"
FIGURES = [  # (column, stage, metric)
    ("sft heldOut", "rlhf", "baselineHeldOutExactMatch"),
    ("rlhf heldOut", "rlhf", "heldOutExactMatch"),
    ("sft eval", "eval", "sft.exactMatch"),
    ("rlhf eval", "eval", "rlhf.exactMatch"),
]


def seeded_manifest(manifest: dict, seed: int, overrides: list[str]) -> dict:
    """The manifest under its own name, every training stage seeded, `--set stage.a.b=value` applied."""
    doc = json.loads(json.dumps(manifest))
    doc["metadata"]["name"] = f"{manifest['metadata']['name']}-seed{seed}"
    stages = {s["name"]: s for s in doc["spec"]["stages"]}
    for stage in stages.values():
        if stage["type"] != "eval":
            stage.setdefault("training", {})["seed"] = seed
    for item in overrides:
        path, _, value = item.partition("=")
        stage, *keys = path.split(".")
        node = stages[stage]
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        parsed = yaml.safe_load(value)
        if parsed is None:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = parsed
    return doc


def run_seed(doc: dict, workdir: Path) -> dict[str, float]:
    """Run one pipeline; its figures from the status local mode writes."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{doc['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    cmd = ["refinery", "run", str(path), "--workdir", str(workdir), "--data-root", str(MANIFEST.parent),
           "--quiet", "--metrics-port", "0"]
    print("$", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    status = json.loads((workdir / doc["metadata"]["name"] / "status.json").read_text())
    metrics = {s["name"]: s.get("metrics", {}) for s in status["stages"]}
    figures = {col: metrics.get(stage, {}).get(key) for col, stage, key in FIGURES}
    figures["phase"] = status.get("phase")
    if done.returncode != 0:
        print(done.stdout[-2000:], file=sys.stderr)
    return figures


def summary(rows: dict[int, dict]) -> dict[str, dict[str, float]]:
    out = {}
    for col, _, _ in FIGURES:
        values = [r[col] for r in rows.values() if r[col] is not None]
        if values:
            out[col] = {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "tiny-math-seeds")
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE",
                        help="change a stage's field for every seed, e.g. rlhf.training.maxSteps=100")
    args = parser.parse_args()
    manifest = yaml.safe_load(args.manifest.read_text())
    rows = {seed: run_seed(seeded_manifest(manifest, seed, args.overrides), args.workdir) for seed in args.seeds}

    cols = [c for c, _, _ in FIGURES]
    print("\nheld-out exact match (greedy)")
    print("seed  " + "  ".join(f"{c:>12}" for c in cols) + "  rlhf>sft  phase")
    for seed, r in rows.items():
        better = all(r[c] is not None for c in cols) and r["rlhf heldOut"] > r["sft heldOut"] and r["rlhf eval"] > r["sft eval"]
        print(f"{seed:<4}  " + "  ".join(f"{r[c]:>12.4f}" if r[c] is not None else f"{'-':>12}" for c in cols)
              + f"  {'yes' if better else 'no':>8}  {r['phase']}")
    stats = summary(rows)
    print("mean  " + "  ".join(f"{stats[c]['mean']:>12.4f}" if c in stats else f"{'-':>12}" for c in cols))
    print("sd    " + "  ".join(f"{stats[c]['sd']:>12.4f}" if c in stats else f"{'-':>12}" for c in cols))
    print(json.dumps({"seeds": rows, "summary": stats, "overrides": args.overrides}, sort_keys=True))


if __name__ == "__main__":
    main()
