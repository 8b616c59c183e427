"""`refinery-train`: the entrypoint of every stage pod (and of local-mode stage processes).

    refinery-train run --config stage.yaml     # train one attempt of one stage (a StageRun)
    refinery-train check --config stage.yaml   # validate the config only (no torch import)
    refinery-train stages                      # list the stage types this trainer knows
    refinery-train launch --wait-for HOST -- torchrun ...   # multi-node pods: wait for rank 0, then exec (launch.py)
    refinery-train prune --stage-dir DIR --keep-last N       # checkpoint retention on the volume (prune.py)
    refinery-train fetch --config fetch.json                 # fetch remote sources once, check every input (sources/)
    refinery-train tokenize --config stage.yaml --index I --of N   # slice I of a corpus' shards (sources/tokenize.py)

Exit codes: 0 success (result.json written); 1 the stage failed — a known cause (bad data, NaN
loss …) prints one message without a traceback, anything else keeps its traceback; 2 the config
is invalid; 143 stopped by SIGTERM (after saving a checkpoint when it was training). The final result, or the failure as JSON {phase, reason, message}, also goes to the
Kubernetes termination message (`/dev/termination-log`, or `$REFINERY_TERMINATION_LOG`).

Stage modules are imported only when run, so `--help` and `check` never import torch.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

# Stage type → module exposing `run(ctx) -> dict[str, float]`. Explicit on purpose: one line per stage.
STAGES: dict[str, str] = {
    "pretrain": "refinery_trainer.stages.pretrain",
    "sft": "refinery_trainer.stages.sft",
    "reward": "refinery_trainer.stages.reward",
    "rlhf": "refinery_trainer.stages.rlhf",
    "dpo": "refinery_trainer.stages.dpo",
    "eval": "refinery_trainer.stages.eval",
    "export": "refinery_trainer.stages.export",
}

EXIT_FAILED = 1
EXIT_INVALID_CONFIG = 2
EXIT_TERMINATED = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM
TERMINATION_LOG = "/dev/termination-log"
TERMINATION_LOG_LIMIT = 4096  # bytes Kubernetes keeps of a termination message
REASON_TRAINER_ERROR = "TrainerError"

log = logging.getLogger("refinery_trainer")


class ConfigError(Exception):
    """The StageRun file is missing, unreadable or invalid."""


# Tools with their own parsers: the multi-node launcher, checkpoint retention, the inputs check, tokenizing.
TOOLS: dict[str, str] = {
    "launch": "refinery_trainer.launch",
    "prune": "refinery_trainer.prune",
    "fetch": "refinery_trainer.sources.fetch",
    "tokenize": "refinery_trainer.sources.tokenize",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in TOOLS:
        return importlib.import_module(TOOLS[argv[0]]).main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "stages":
        print("\n".join(STAGES))
        return 0
    try:
        run = load_stage_run(args.config)
    except ConfigError as exc:
        print(f"refinery-train: {exc}", file=sys.stderr)
        return EXIT_INVALID_CONFIG
    if args.command == "check":
        print(f"{args.config}: valid {run.stage.type} stage {run.stage.name!r} (attempt {run.attempt})")
        return 0
    _setup_logging(args.log_level)
    return run_stage(run)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refinery-train", description="Run one stage of a Refinery training pipeline.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "train one stage attempt"), ("check", "validate a stage config and exit")):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--config", "-c", required=True, help="StageRun file (YAML or JSON) written by the planner")
        if name == "run":
            sub.add_argument("--log-level", default=os.environ.get("REFINERY_LOG_LEVEL", "INFO"), help="default: INFO")
    commands.add_parser("stages", help="list the stage types this trainer runs")
    return parser


def load_stage_run(path: str):
    """Parse and validate a StageRun file; every problem becomes one ConfigError paragraph."""
    import yaml
    from pydantic import ValidationError

    from refinery.api.run import StageRun

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML/JSON: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a mapping (a StageRun), got {type(data).__name__}")
    try:
        run = StageRun.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{_loc(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid stage config {path}: {problems}") from None
    if run.stage.type not in STAGES:
        raise ConfigError(f"invalid stage config {path}: stage.type {run.stage.type!r} is not one of {', '.join(STAGES)}")
    return run


def _loc(loc: tuple) -> str:
    parts = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts) or "(top level)"


def run_stage(run) -> int:
    """Run the stage; write result.json, the final progress record and the termination message."""
    from .context import StageContext
    from .errors import StageError, TerminatedError
    from .report import short_error
    from .startup import hide_unused_packages, restore

    hidden = hide_unused_packages(run.stage)  # no DeepSpeed, vLLM, Liger import for a stage that does not use them
    try:
        return _run_stage(run)
    finally:
        restore(hidden)


def _run_stage(run) -> int:
    from .context import StageContext
    from .errors import StageError, TerminatedError
    from .tracking import start_trackers
    from .report import short_error

    # Progress goes through the Reporter and the log; download/save/map bars would only flood pod logs.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    ctx = StageContext(run)
    ctx.attempt_dir.mkdir(parents=True, exist_ok=True)
    ctx.report(force=True, phase="Running", attempt=run.attempt)
    log.info("stage %r (%s) attempt %d of pipeline %r", run.stage.name, run.stage.type, run.attempt, run.pipeline)
    previous = _stop_gracefully_on_sigterm(ctx)
    try:
        ctx.trackers = start_trackers(ctx)  # spec.tracking's MLflow and W&B runs, rank 0
        stage = importlib.import_module(STAGES[run.stage.type])
        metrics = {**stage.run(ctx), **ctx.throughput}  # tokensPerSecond, mfu: measured by ThroughputCallback
    except TerminatedError as exc:
        _fail(ctx, exc.message, exc.reason, traceback=False)
        return EXIT_TERMINATED
    except StageError as exc:
        return _fail(ctx, exc.message, exc.reason, traceback=False)
    except Exception as exc:  # a bug: report it, then let the traceback reach the log
        # The status and the termination message get a short, header-free description; the full
        # traceback goes to the pod log only.
        _fail(ctx, f"{type(exc).__name__}: {short_error(exc)}", REASON_TRAINER_ERROR, traceback=True)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if not ctx.is_main_process:
        return 0
    result = write_result(ctx, metrics)
    for tracker in ctx.trackers:
        tracker.succeeded(result)
    ctx.reporter.succeeded(result["metrics"], result["output"], step=ctx.steps)
    write_termination_message(json.dumps(result, sort_keys=True))
    log.info("stage %r succeeded in %d steps: %s", run.stage.name, ctx.steps, _fmt(result["metrics"]))
    return 0


def _stop_gracefully_on_sigterm(ctx):
    """While training, SIGTERM (Kubernetes' notice before a kill) saves a checkpoint and stops; otherwise,
    or on a second SIGTERM, the process exits at once (nothing would be lost)."""

    def handle(signum, frame):
        if ctx.train_started and not ctx.stop_requested:
            ctx.stop_requested = True
            log.warning("SIGTERM: saving a checkpoint after this step, then stopping")
            return
        raise SystemExit(EXIT_TERMINATED)

    try:
        return signal.signal(signal.SIGTERM, handle)  # the previous handler, restored when the stage ends
    except ValueError:  # not the main thread (an embedding caller): keep the default behaviour
        return None


def write_result(ctx, metrics: dict[str, float]) -> dict:
    """`<stage_dir>/result.json`, written last (atomically): the stage's handoff to the planner."""
    from .checkpoints import atomic_write_text

    result = {
        "stage": ctx.stage.name,
        "type": ctx.stage.type,
        "attempt": ctx.attempt,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "output": ctx.output or str(ctx.model_dir),
        "steps": ctx.steps,
        "sources": ctx.lineage(),
        **({"data": ctx.data_lineage} if ctx.data_lineage else {}),  # data.mixture: datasets, weights, rows
    }
    atomic_write_text(ctx.result_path, json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def _fail(ctx, message: str, reason: str, *, traceback: bool) -> int:
    ctx.reporter.failed(message, reason)
    for tracker in ctx.trackers:
        tracker.failed(reason)
    if ctx.is_main_process:
        write_termination_message(json.dumps({"phase": "Failed", "reason": reason, "message": message[:3000]}))
    if not traceback:
        print(f"refinery-train: stage {ctx.stage.name!r} failed ({reason}): {message}", file=sys.stderr)
    return EXIT_FAILED


def write_termination_message(text: str) -> bool:
    """Write the Kubernetes termination message, if there is somewhere to write it.

    `$REFINERY_TERMINATION_LOG` is written when its folder exists and is writable. The default
    `/dev/termination-log` only when the file exists (the kubelet mounts it into every container):
    a stage run as root on a workstation must not litter its `/dev`.
    """
    override = os.environ.get("REFINERY_TERMINATION_LOG")
    path = Path(override or TERMINATION_LOG)
    writable = os.access(path if path.exists() else path.parent, os.W_OK) and path.parent.is_dir()
    if not writable or (override is None and not path.is_file()):
        return False
    data = text.encode()[:TERMINATION_LOG_LIMIT]
    try:
        path.write_bytes(data)
    except OSError as exc:
        log.warning("cannot write the termination message to %s: %s", path, exc)
        return False
    return True


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))


if __name__ == "__main__":
    sys.exit(main())
