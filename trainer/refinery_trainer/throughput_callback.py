"""`ThroughputCallback`: tokens/s and MFU of a stage, live with every training log and final at the end.

Time is summed over optimiser steps only (`on_step_begin` to `on_step_end`): evaluations,
checkpoint saves and logging between steps do not count, generation inside an RL step does.
Tokens are `state.num_input_tokens_seen`: the non-padding input tokens of every process
(`include_num_input_tokens_seen="non_padding"`; TRL's RLOO/GRPO count prompt + completion
tokens there). With every training log it adds `tokens_per_second` and `mfu` (over the steps
since the previous log) to the log dict, so the callbacks after it see them: metrics.jsonl,
the progress record (`tokensPerSecond`, `mfu`) and the Prometheus gauges. At the end of
training, `ctx.throughput` holds the figures over the whole attempt, which go into result.json.
MFU only where the GPU's peak is known (`throughput.peak_tflops`): never on a CPU.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from transformers import TrainerCallback

from .throughput import ModelShape, flops_per_token, mfu, peak_tflops

if TYPE_CHECKING:
    from .context import StageContext

log = logging.getLogger(__name__)


def device_peak_tflops(override: float | None) -> float | None:
    """The bf16 peak of this process's GPU (None on CPU or an unknown GPU)."""
    import torch

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return peak_tflops(name, override)


class ThroughputCallback(TrainerCallback):
    def __init__(self, ctx: StageContext, clock=time.perf_counter, peak: float | None = None):
        self.ctx = ctx
        self.clock = clock
        self.peak = peak  # None: looked up at on_train_begin
        self.flops_per_token = 0.0
        self.devices = 1
        self._step_started: float | None = None
        self._seconds = 0.0  # step time of this attempt
        self._tokens_at_begin = 0
        self._window: tuple[float, int] = (0.0, 0)  # (step seconds, tokens) at the previous training log

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.peak is None:
            self.peak = device_peak_tflops(self.ctx.stage.resources.gpu_peak_tflops)
        self.devices = max(1, getattr(args, "world_size", 1))
        if model is not None:
            seq_len = min(self.ctx.training.seq_len, getattr(model.config, "max_position_embeddings", None) or 10**9)
            self.flops_per_token = flops_per_token(ModelShape.of(model), seq_len)
        self._tokens_at_begin = int(state.num_input_tokens_seen or 0)
        self._window = (0.0, self._tokens_at_begin)
        self._step_started = self.clock()  # loops that fire no on_step_begin time from here

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = self.clock()

    def on_step_end(self, args, state, control, **kwargs):
        now = self.clock()
        if self._step_started is not None:
            self._seconds += now - self._step_started
        self._step_started = now
        self.ctx.throughput = self.figures(self._seconds, int(state.num_input_tokens_seen or 0) - self._tokens_at_begin)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:  # evaluations and the initial evaluation: no training time
            return
        seconds, tokens = self._window
        now_tokens = int(state.num_input_tokens_seen or 0)
        window = self.figures(self._seconds - seconds, now_tokens - tokens)
        self._window = (self._seconds, now_tokens)
        if "tokensPerSecond" in window:
            logs["tokens_per_second"] = window["tokensPerSecond"]
        if "mfu" in window:
            logs["mfu"] = window["mfu"]

    def on_train_end(self, args, state, control, **kwargs):
        if self.ctx.throughput:
            shown = " ".join(f"{k}={v:.4g}" for k, v in self.ctx.throughput.items())
            log.info("throughput over %.1f s of training steps: %s", self._seconds, shown)

    def figures(self, seconds: float, tokens: int) -> dict[str, float]:
        """{"tokensPerSecond": ..., "mfu": ...} for `tokens` trained in `seconds` of steps ({} when not measured)."""
        if seconds <= 0 or tokens <= 0:
            return {}
        out = {"tokensPerSecond": tokens / seconds}
        utilisation = mfu(out["tokensPerSecond"], self.flops_per_token, self.peak, self.devices)
        if utilisation is not None and self.flops_per_token:
            out["mfu"] = utilisation
        return out
