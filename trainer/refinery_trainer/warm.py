"""Warm starts for local mode: stage processes forked from one process that has already imported
torch, transformers, TRL and datasets.

A stage process spends 5-8 s of a two-core machine importing those libraries before it reads its
first row, and local mode starts one per stage. `refinery run` therefore starts a fork server
once (Python's `multiprocessing` "forkserver" start method, preloading `warm_server`) while
its initializer checks the inputs; every stage attempt is then a fork of that server running
`run_stage_process` — the same `refinery-train run --config ...` a plain process runs, with the
attempt's own environment, its output in the attempt's log, and its exit code or signal.

A CUDA context must never be forked, so the server imports the libraries without touching CUDA
and checks that it did not (`torch.cuda.is_initialized()` stays False): a fork of it may use a
GPU as a fresh process would. What cannot be had warm runs cold — the child replaces itself
(`exec`) with a fresh `python -m refinery_trainer run`: a stage that uses one of the optional
packages hidden here (DeepSpeed, vLLM, Liger: startup.py hides them from stages that do not use
them, and the libraries remember at import that they are absent), or a server whose imports
failed. Cluster pods never fork: one process per pod, as before.
"""

from __future__ import annotations

import os
import sys

from .startup import unused_packages

# Hidden before the libraries load, exactly as startup.hide_unused_packages would for a stage that
# uses none of them; a stage that needs one of them runs cold.
HIDDEN = ("deepspeed", "vllm", "liger_kernel")
SERVER_MODULE = "refinery_trainer.warm_server"  # what the fork server preloads: its import runs preload()


def preload() -> str | None:
    """Import what the stages import; None when this process may be forked, else why not."""
    for name in HIDDEN:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    try:
        import datasets  # noqa: F401  (TRL's stages read Arrow datasets)
        import peft  # noqa: F401
        import torch
        import transformers  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, Trainer  # noqa: F401
        from trl import DPOTrainer, GRPOTrainer, RewardTrainer, RLOOTrainer, SFTTrainer  # noqa: F401

        from . import cli, context  # noqa: F401
        from .stages import dpo, eval, export, pretrain, reward, rlhf, sft  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure here only means "start cold"
        return f"the warm imports failed ({type(exc).__name__}: {exc})"
    if torch.cuda.is_initialized():
        return "importing the libraries initialised CUDA, which a fork cannot inherit"
    return None


def run_stage_process(config: str, log_path: str, env: dict[str, str]) -> None:
    """The body of a forked stage process: `refinery-train run --config <config>`, output to
    `log_path`, environment `env` — or a fresh interpreter doing the same when this one is not warm."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.environ.clear()
    os.environ.update(env)
    argv = ["run", "--config", config]
    server = sys.modules.get(SERVER_MODULE)  # imported only in the fork server, so only its forks have it
    cold = server.NOT_WARM if server is not None else "not forked from local mode's fork server"
    if cold is None and _needs_hidden_package(config):
        cold = f"the stage uses one of {', '.join(HIDDEN)}, which the fork server does not load"
    how = "warm start, forked from local mode's fork server" if cold is None else f"cold start: {cold}"
    print(f"refinery-train: {how}", file=sys.stderr, flush=True)
    if cold is None:
        import logging

        from .cli import main

        sys.argv = ["refinery-train", *argv]
        try:
            sys.exit(main(argv))
        finally:
            logging.shutdown()  # a fork ends with os._exit, which skips the interpreter's own shutdown
    os.execve(sys.executable, [sys.executable, "-m", "refinery_trainer", *argv], env)


def _needs_hidden_package(config: str) -> bool:
    """Whether the stage uses a package hidden in the server (or its config does not load: the
    cold process then reports that, as it would have)."""
    from .cli import ConfigError, load_stage_run

    try:
        run = load_stage_run(config)
    except ConfigError:
        return True
    return not set(HIDDEN) <= set(unused_packages(run.stage))
