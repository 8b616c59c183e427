"""TrainerCallbacks shared by every stage (see `StageContext.callbacks()`).

- `CheckpointMarkerCallback`: transformers calls `on_save` after `_save_checkpoint` has written the
  whole checkpoint folder (weights, optimizer, scheduler, RNG, trainer_state.json);
  `StageContext.mark_checkpoint` waits for every rank, fsyncs it, writes the marker last, rotates
  old complete checkpoints and reports the checkpoint at once.
- `ProgressCallback`: step/max_steps/metrics to the Reporter (throttled), and a NaN/inf loss fails
  the stage with reason `NanLoss` instead of training on garbage; after SIGTERM it has the Trainer
  save a checkpoint at the end of the current step and stop (graceful eviction/preemption).
  It also reports `effectiveBatchSize` (batch x accumulation x processes) at the start, and
  `tokensPerSecond` and `mfu` with every training log (computed by `ThroughputCallback`).
- `MetricsLogCallback`: every log dict (training and evaluation, transformers and TRL keys as
  logged) appended as one JSON line `{"step": ..., "time": ..., **logs}` to
  `<stage_dir>/attempt-<n>/metrics.jsonl` by rank 0: the full-resolution history that the
  throttled progress record cannot be (local mode plots it; on a cluster it stays on the volume).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from refinery.api.run import METRICS_LOG_FILE

from . import distributed
from .errors import NanLossError

if TYPE_CHECKING:
    from .context import StageContext

log = logging.getLogger(__name__)

_LOSS_KEYS = ("loss", "eval_loss")


# Training-log keys (transformers and TRL) worth reporting while a stage runs, under the names
# status and metrics use. Everything else a trainer logs (runtimes, per-token statistics, TRL's
# slash-separated keys) stays in the pod log: status carries headline figures only.
LIVE_METRICS = {
    "loss": "trainLoss",
    "learning_rate": "learningRate",
    "grad_norm": "gradNorm",
    "eval_loss": "evalLoss",
    "eval_accuracy": "evalAccuracy",
    "reward": "trainReward",
    "kl": "kl",
    "tokens_per_second": "tokensPerSecond",  # added to training logs by ThroughputCallback
    "mfu": "mfu",
}


def _log_metrics(logs: dict) -> dict[str, float]:
    return {
        name: float(logs[key])
        for key, name in LIVE_METRICS.items()
        if isinstance(logs.get(key), (int, float))
    }


class CheckpointMarkerCallback(TrainerCallback):
    def __init__(self, ctx: StageContext):
        self.ctx = ctx
        self.last_metrics: dict[str, float] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.last_metrics.update(_log_metrics(logs or {}))

    def on_save(self, args, state, control, **kwargs):
        # Every rank gets here after writing its part (ZeRO shards, rng_state_<rank>.pth); the
        # context waits for all of them before rank 0 writes the marker.
        path = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        self.ctx.mark_checkpoint(path, state.global_step, self.last_metrics)


class ProgressCallback(TrainerCallback):
    def __init__(self, ctx: StageContext):
        self.ctx = ctx

    def on_train_begin(self, args, state, control, **kwargs):
        from .devices import effective_batch_size

        # Everything a resume loads (weights, optimizer, scheduler, state) is loaded by now.
        self.ctx.train_started = True
        batch = effective_batch_size(args.per_device_train_batch_size, args.gradient_accumulation_steps, args.world_size)
        log.info("effective batch size %d = %d per device x %d accumulation x %d processes", batch,
                 args.per_device_train_batch_size, args.gradient_accumulation_steps, args.world_size)
        metrics = {**self.ctx.reporter.record.metrics, "effectiveBatchSize": float(batch)}
        self.ctx.report(force=True, step=state.global_step, max_steps=state.max_steps or None, metrics=metrics)

    def on_step_end(self, args, state, control, **kwargs):
        # SIGTERM on any rank: every rank saves right after this step, then stops (distributed.any_rank).
        if distributed.any_rank(self.ctx.stop_requested):
            self.ctx.stop_requested = True
            control.should_save = True
            control.should_training_stop = True
        self.ctx.report(step=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        for key in _LOSS_KEYS:
            value = logs.get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise NanLossError(
                    f"stage {self.ctx.stage.name!r}: {key} became {value} at step {state.global_step}; "
                    "lower training.learningRate or check the data"
                )
        if not self.ctx.train_started:
            return  # the evaluation of the initial model: reported as initialEval* by train_and_evaluate
        live = _log_metrics(logs)
        metrics = {**self.ctx.reporter.record.metrics, **live}
        self.ctx.report(step=state.global_step, metrics=metrics)
        if state.is_world_process_zero and logs:
            shown = " ".join(f"{k}={v:.4g}" for k, v in live.items())
            log.info("step %d/%d %s", state.global_step, state.max_steps, shown)


class MetricsLogCallback(TrainerCallback):
    """Append each log dict as one JSON line to `<attempt_dir>/metrics.jsonl` (rank 0 only).

    A resumed attempt writes its own file from the checkpoint's step on; a reader merges the
    attempts, the newer one winning where steps repeat. Non-finite numbers are written as null
    (strict JSON), and ProgressCallback still fails the stage on a NaN loss.
    """

    def __init__(self, ctx: StageContext, clock=time.time):
        self.path = ctx.attempt_dir / METRICS_LOG_FILE
        self.clock = clock

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.append(state.global_step, logs)

    def append(self, step: int, logs: dict) -> None:
        """One line: the step, the time, and every number of `logs`."""
        line = {"step": step, "time": round(self.clock(), 3)}
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                line[key] = value if math.isfinite(value) else None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")
