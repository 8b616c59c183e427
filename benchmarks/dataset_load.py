"""Loading an sft dataset: peak RSS and time, rows read into Python dicts (before) against `datasets`'
memory-mapped Arrow tables (after).

    python benchmarks/dataset_load.py                       # 100 K and 1 M rows
    python benchmarks/dataset_load.py --rows 20000 --root /tmp/dl

A JSON lines file of prompt/completion rows (~330 bytes a row, from a small grammar) is written
under `--root` (default /tmp/refinery-dataset-load, never the repository) for each size. Each run
is its own child process, whose peak RSS is `wait4`'s ru_maxrss, and does what an sft stage does
with its data before the model loads: read the file, check every row's prompt and completion are
strings, split 10% off as the held-out part (seeded), and build the `datasets.Dataset`s handed to
SFTTrainer, in TRL's column names.

- `before`: the path the stages had until now, kept here as the baseline: `sources.files.read_data`
  (every row a dict), `Table.require`/`require_text`/`split`/`select`, then `Dataset.from_list`.
- `after-cold`: `arrow_data.load_table` with an empty cache: `datasets` converts the file into an
  Arrow file in the cache folder (the stage's `cache/datasets` on the volume) and memory-maps it.
- `after-warm`: the same with the cache present — a retry of the stage, or a second stage on the
  same file: nothing is converted again.

Both start from the same imports (datasets, pyarrow), whose RSS (`import_rss_mb`) is the floor
of every figure. Ratios are before / after. The last stdout line is one JSON object.
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

WORDS = ("the model answers questions about cows cats and the weather in short clear sentences with numbers "
         "like seven twelve and forty two while keeping its tone friendly and its facts straight").split()


def write_dataset(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(rows):
            prompt = " ".join(rng.choices(WORDS, k=18))
            completion = " ".join(rng.choices(WORDS, k=36))
            f.write(json.dumps({"id": i, "prompt": f"Q{i}: {prompt}?", "completion": f" {completion}."}) + "\n")


def child(mode: str, path: Path, cache: Path) -> dict:
    """One run in this process; the figures it measured itself."""
    import resource

    import datasets  # noqa: F401 - both paths import it: the floor of the RSS figures
    import pyarrow  # noqa: F401

    datasets.disable_progress_bars()
    import_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    columns = {"prompt": "prompt", "completion": "completion"}
    start = time.perf_counter()
    if mode == "before":
        from datasets import Dataset

        from refinery_trainer.sources.files import read_data

        table = read_data(path).require("prompt", "completion").require_text("prompt", "completion")
        train, held = table.split(0.1, seed=0)
        train_ds, held_ds = Dataset.from_list(train.select(columns)), Dataset.from_list(held.select(columns))
    else:
        from refinery_trainer.arrow_data import load_table

        table = load_table(path, cache_dir=cache).require("prompt", "completion").require_text("prompt", "completion")
        train, held = table.split(0.1, seed=0)
        train_ds, held_ds = train.select(columns), held.select(columns)
    seconds = time.perf_counter() - start
    assert len(train_ds) + len(held_ds) == len(table)
    return {"seconds": round(seconds, 2), "rows": len(table), "import_rss_mb": round(import_rss, 1)}


def run_child(mode: str, path: Path, cache: Path) -> dict:
    """`child` in a fresh interpreter; its figures plus its peak RSS from wait4."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", mode, "--path", str(path), "--cache", str(cache)],
                            stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} on {path} failed with exit code {proc.returncode}")
    figures = json.loads(out.strip().splitlines()[-1])
    figures["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)  # Linux: kilobytes
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--root", type=Path, default=Path("/tmp/refinery-dataset-load"))
    parser.add_argument("--child", choices=["before", "after"], help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.path, args.cache)))
        return {}

    args.root.mkdir(parents=True, exist_ok=True)
    results = {}
    for rows in args.rows:
        path = args.root / f"sft-{rows}.jsonl"
        if not path.is_file():
            write_dataset(path, rows)
        cache = args.root / f"cache-{rows}"
        shutil.rmtree(cache, ignore_errors=True)
        before = run_child("before", path, cache)
        cold = run_child("after", path, cache)
        warm = run_child("after", path, cache)
        result = {
            "file_mb": round(path.stat().st_size / 2**20, 1),
            "before": before, "after_cold": cold, "after_warm": warm,
            "rss_ratio_cold": round(before["peak_rss_mb"] / cold["peak_rss_mb"], 2),
            "rss_ratio_warm": round(before["peak_rss_mb"] / warm["peak_rss_mb"], 2),
            "time_ratio_cold": round(before["seconds"] / cold["seconds"], 2),
            "time_ratio_warm": round(before["seconds"] / warm["seconds"], 2),
        }
        results[str(rows)] = result
        print(f"{rows:>9} rows ({result['file_mb']} MB): before {before['peak_rss_mb']} MB {before['seconds']} s | "
              f"after cold {cold['peak_rss_mb']} MB {cold['seconds']} s | warm {warm['peak_rss_mb']} MB "
              f"{warm['seconds']} s | RSS ratio {result['rss_ratio_cold']}x cold, {result['rss_ratio_warm']}x warm",
              flush=True)
        shutil.rmtree(cache, ignore_errors=True)
    print(json.dumps({"rows": results}))
    return results


if __name__ == "__main__":
    main()
