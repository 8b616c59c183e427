"""`refinery-train tokenize`: a pretrain stage's streamed corpus tokenized before the stage, by
several workers at once, each its slice of the shards (sources/corpus.py `slice_of`).

    refinery-train tokenize --config stage.yaml --index $JOB_COMPLETION_INDEX --of 8   # one pod of the Indexed Job
    refinery-train tokenize --config stage.yaml --workers 4                            # local mode: 4 processes

It reads the same StageRun as the stage (`refinery-train run`), builds the same tokenizer and
writes each shard's tokens where the stage looks for them, so the stage then finds every shard
complete and starts training. A shard already complete (an earlier attempt of the step, or of the
stage) is skipped: a failed worker's retry redoes only the shards it had not finished. Workers
never share a shard, so every token file has one writer.

Exit codes as `refinery-train run`: 0 the slice is complete (the counts as one JSON line on
stdout and in the termination message), 1 it failed (`BadData` …: one line, no traceback),
2 the config is invalid.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor

log = logging.getLogger(__name__)


def tokenize_worker(run, index: int = 0, of: int = 1) -> dict[str, int]:
    """Worker `index` of `of`: its slice of every corpus of the stage (training, then held-out)."""
    from ..context import StageContext
    from ..report import Reporter
    from ..stages.pretrain_stream import corpora, corpus_tokenizer, tokens_dir, wants_streaming
    from .corpus import tokenize_slice

    ctx = StageContext(run, reporter=Reporter(None, attempt=run.attempt))  # the stage's record is not ours
    counts = {"shards": 0, "tokenized": 0, "skipped": 0, "tokens": 0}
    if not wants_streaming(ctx.data_file(ctx.data.path)):  # read whole by the stage: nothing to prepare
        log.info("%s is read whole by the stage (one file under 64 MiB): nothing to tokenize", ctx.data.path)
        return counts
    files = corpora(ctx)
    tokenizer = corpus_tokenizer(ctx, files[0])
    for shards in files:
        for key, value in tokenize_slice(shards, tokenizer, ctx.data.text_field, tokens_dir(ctx), index, of).items():
            counts[key] += value
    return counts


def _worker(run_json: str, index: int, of: int) -> dict[str, int]:
    from refinery.api.run import StageRun

    from .. import cli

    cli._setup_logging("INFO")  # a spawned process starts with no logging set up
    return tokenize_worker(StageRun.model_validate_json(run_json), index, of)


def tokenize_parallel(run, workers: int) -> dict[str, int]:
    """Local mode's step: `workers` processes, worker i doing slice i of `workers`. Processes, not
    threads: reading JSON and building token lists holds the GIL. Started by spawn, not fork: a
    forked child of a process that already used the Rust tokenizer's thread pool disables it."""
    if workers == 1:
        return tokenize_worker(run)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(_worker, run.model_dump_json(by_alias=True), i, workers) for i in range(workers)]
        results = [f.result() for f in futures]
    return {key: sum(r[key] for r in results) for key in results[0]}


def main(argv: list[str] | None = None) -> int:
    from .. import cli
    from ..errors import StageError

    parser = argparse.ArgumentParser(prog="refinery-train tokenize", description=__doc__.split("\n")[0])
    parser.add_argument("--config", "-c", required=True, help="the stage's StageRun file (as for `run`)")
    parser.add_argument("--index", type=int, default=0, help="this worker's slice (an Indexed Job's $JOB_COMPLETION_INDEX)")
    parser.add_argument("--of", type=int, default=1, help="workers in all (the Job's completions)")
    parser.add_argument("--workers", type=int, default=None, help="run this many local worker processes instead")
    args = parser.parse_args(argv)
    if not 0 <= args.index < args.of or (args.workers is not None and args.workers < 1):
        parser.error(f"--index {args.index} must be in [0, --of {args.of}) and --workers at least 1")
    try:
        run = cli.load_stage_run(args.config)
    except cli.ConfigError as exc:
        print(f"refinery-train: {exc}", file=sys.stderr)
        return cli.EXIT_INVALID_CONFIG
    cli._setup_logging("INFO")
    try:
        counts = tokenize_parallel(run, args.workers) if args.workers else tokenize_worker(run, args.index, args.of)
    except StageError as exc:
        print(f"refinery-train: tokenizing stage {run.stage.name!r} failed ({exc.reason}): {exc.message}", file=sys.stderr)
        cli.write_termination_message(json.dumps({"phase": "Failed", "reason": exc.reason, "message": exc.message[:3000]}))
        return cli.EXIT_FAILED
    line = json.dumps({"phase": "Succeeded", **counts}, sort_keys=True)
    print(line, flush=True)
    cli.write_termination_message(line)
    return 0
