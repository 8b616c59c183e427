"""Tokenizing a streamed pretraining corpus with N parallel workers, and resuming it.

    python benchmarks/tokenize.py                          # 128 MB in 16 shards; 1, 2 and 4 workers
    python benchmarks/tokenize.py --size-mb 64 --workers 1 2

Generated JSONL shards (`--shard-mb` each, short documents from a small grammar, the corpus of
benchmarks/big_dataset.py) go to `--root` (default /tmp/refinery-tokenize, never the repository).
Each run is the real step, `refinery-train tokenize --config stage.yaml --workers N` (what local
mode runs; on a cluster each worker is one pod of the Indexed Job), as its own process, into an
empty stage folder: its wall time includes starting the workers and each worker's training of
the stage's BPE tokenizer on the corpus' first 20,000 documents (seconds), so it is what a user
waits. Reported per worker count: seconds, MB/s and tokens/s of the whole corpus, and the ratio
against one worker, in two series: `runs`, each worker's Rust tokenizer free to encode a batch on
every core (the default: one process already keeps the cores busy while it encodes, so more
processes only overlap the Python part: reading, JSON, building token lists), and
`runs_one_thread`, each worker on one core (`TOKENIZERS_PARALLELISM=false`), as a worker pod with
`cpu: 1` is, which is how the step scales out over nodes. Then a resumed step: the token folders
of every other shard deleted (a step whose workers died half-way), run again with the most
workers: seconds and shards skipped.

The speed-up is bounded by the cores: this script says how many it saw (`os.cpu_count()`), and
on a 2-core machine 4 workers cannot beat 2. The last stdout line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from big_dataset import MODEL, make_corpus  # noqa: E402 - the same corpus and tokenizer settings


def stage_config(work: Path, corpus: Path) -> Path:
    run = {"pipeline": "p", "attempt": 1, "stageDir": str(work / "p" / "pretrain"), "dataRoot": str(work),
           "stage": {"name": "pretrain", "type": "pretrain", "model": MODEL, "data": {"path": str(corpus)},
                     "training": {"maxSteps": 1, "seqLen": 128}}}
    config = work / "stage.yaml"
    config.write_text(yaml.safe_dump(run))
    return config


def tokenize(config: Path, workers: int, one_thread: bool = False) -> tuple[float, dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "REFINERY_TERMINATION_LOG": str(config.parent / "termination-log")}
    if one_thread:  # each worker encodes on one core, as a pod with `cpu: 1` would
        env.update(TOKENIZERS_PARALLELISM="false", RAYON_NUM_THREADS="1")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "refinery_trainer", "tokenize", "--config", str(config),
                           "--workers", str(workers)], env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"tokenize with {workers} worker(s) failed:\n{done.stderr[-3000:]}")
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=128, help="corpus size")
    parser.add_argument("--shard-mb", type=int, default=8, help="size of each shard")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--root", type=Path, default=Path("/tmp/refinery-tokenize"))
    args = parser.parse_args()

    import big_dataset

    big_dataset.SHARD_MB = args.shard_mb
    corpus = make_corpus(args.root / f"corpus-{args.size_mb}mb-{args.shard_mb}", args.size_mb)
    shards = sorted(corpus.glob("*.jsonl"))
    size_mb = sum(p.stat().st_size for p in shards) / 2**20
    figures: dict = {"corpus_mb": round(size_mb, 1), "shards": len(shards), "cpus": os.cpu_count()}
    print(f"corpus: {size_mb:.0f} MB in {len(shards)} shards; {os.cpu_count()} CPU(s)", flush=True)
    work = args.root / "work"  # one at a time: each run's tokens are as big as the corpus
    for series, one_thread in (("runs", False), ("runs_one_thread", True)):
        figures[series] = {}
        for workers in args.workers:
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            seconds, counts = tokenize(stage_config(work, corpus), workers, one_thread)
            assert counts["tokenized"] == len(shards), counts
            run = {"seconds": round(seconds, 2), "mb_per_s": round(size_mb / seconds, 2),
                   "tokens_per_s": round(counts["tokens"] / seconds), "tokens": counts["tokens"]}
            figures[series][str(workers)] = run
            print(f"{workers} worker(s){' (one thread each)' if one_thread else ''}: {seconds:7.1f} s  "
                  f"{run['mb_per_s']:6.2f} MB/s  {run['tokens_per_s']:>10,} tokens/s", flush=True)
        one = figures[series][str(args.workers[0])]["seconds"]
        figures[f"speedup{series[4:]}"] = {w: round(one / r["seconds"], 2) for w, r in figures[series].items()}

    # Resume: the last run's step (one thread per worker), with every other shard's tokens gone.
    [tokenizer_dir] = list((work / "p" / "pretrain" / "tokenized").iterdir())
    folders = sorted(tokenizer_dir.iterdir())
    for folder in folders[::2]:
        shutil.rmtree(folder)
    workers = args.workers[-1]
    seconds, counts = tokenize(work / "stage.yaml", workers, one_thread=True)
    figures["resumed"] = {"workers": workers, "seconds": round(seconds, 2), "shards_skipped": counts["skipped"],
                          "shards_tokenized": counts["tokenized"],
                          "full_run_seconds": figures["runs_one_thread"][str(workers)]["seconds"]}
    print(f"resumed ({workers} workers, {len(folders[::2])} of {len(folders)} shards to redo): {seconds:.1f} s, "
          f"{counts['skipped']} shards skipped", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
