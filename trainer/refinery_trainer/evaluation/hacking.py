"""Reward hacking, seen while it happens: the reward rises while the completions collapse.

    verdict = hacking_verdict(first_reward=0.9, reward=4.8, empty=1.0, truncated=0.0, kl=0.3, max_kl=None)
    # {"completionsCollapsed": 1.0}

A policy that found a reward model's blind spot earns more reward with answers nobody wants: none
at all (every completion empty), or endless ones (every completion cut at maxCompletionLength).
The numbers to watch are logged anyway (TRL's completion length and clipped ratio, our empty
share, KL); `HackingWatch` reads them at each training log and reports `completionsCollapsed`
and `klExceeded` as metrics (1.0 when true), which the operator turns into the pipeline's
`RewardHacking` condition and a Warning Event. With `rl.stopOnHacking` the stage stops.
"""

from __future__ import annotations

import logging

from transformers import TrainerCallback

from ..errors import StageError

log = logging.getLogger(__name__)
REASON_REWARD_HACKING = "RewardHacking"
COLLAPSED_SHARE = 0.9  # empty (or truncated, at 0.99) on this share of completions counts as collapsed
TRUNCATED_SHARE = 0.99
REWARD_RISE = 1e-6  # the reward must have risen at all since the first log


def hacking_verdict(*, first_reward: float | None, reward: float | None, empty: float | None,
                    truncated: float | None, kl: float | None, max_kl: float | None) -> dict[str, float]:
    """`completionsCollapsed` / `klExceeded` (1.0) when they hold; {} when nothing is wrong."""
    found: dict[str, float] = {}
    rising = first_reward is not None and reward is not None and reward > first_reward + REWARD_RISE
    if rising and ((empty or 0.0) >= COLLAPSED_SHARE or (truncated or 0.0) >= TRUNCATED_SHARE):
        found["completionsCollapsed"] = 1.0
    if max_kl is not None and kl is not None and kl > max_kl:
        found["klExceeded"] = 1.0
    return found


def describe(verdict: dict[str, float], metrics: dict[str, float], max_kl: float | None) -> str:
    parts = []
    if verdict.get("completionsCollapsed"):
        parts.append(f"the reward rose to {metrics.get('trainReward', float('nan')):.4g} while completions collapsed "
                     f"(empty {metrics.get('emptyFraction', 0):.0%}, truncated {metrics.get('truncatedFraction', 0):.0%}, "
                     f"mean length {metrics.get('meanCompletionLength', 0):.2f} tokens)")
    if verdict.get("klExceeded"):
        parts.append(f"KL {metrics.get('kl', float('nan')):.4g} exceeds rl.maxKl {max_kl:g}")
    return "; ".join(parts)


class EmptyCompletionWatch:
    """A reward function of weight zero in TRL's list: it adds nothing to any reward, and records the
    share of empty completions in each batch (TRL logs lengths and clipping, not emptiness)."""

    __name__ = "empty_completion_watch"  # TRL names the reward's log keys after it

    def __init__(self) -> None:
        self.empty_fraction: float | None = None

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        texts = [c if isinstance(c, str) else " ".join(m.get("content", "") for m in c) for c in completions]
        self.empty_fraction = sum(not t.strip() for t in texts) / max(1, len(texts))
        return [0.0] * len(texts)


class HackingWatch(TrainerCallback):
    """Reads each training log: reports the completion statistics and the verdict; stops on it if asked."""

    def __init__(self, ctx, rl, empty_watch: EmptyCompletionWatch, max_completion_length: int):
        self.ctx, self.rl, self.empty_watch = ctx, rl, empty_watch
        self.max_completion_length = max_completion_length
        self.first_reward: float | None = None
        self.stopped: str | None = None  # why training was stopped

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "reward" not in logs:
            return
        reward = float(logs["reward"])
        if self.first_reward is None:
            self.first_reward = reward
        live = {"trainReward": reward}
        if isinstance(logs.get("completions/mean_length"), (int, float)):
            live["meanCompletionLength"] = float(logs["completions/mean_length"])
        if isinstance(logs.get("completions/clipped_ratio"), (int, float)):
            live["truncatedFraction"] = float(logs["completions/clipped_ratio"])
        if self.empty_watch.empty_fraction is not None:
            live["emptyFraction"] = self.empty_watch.empty_fraction
        if isinstance(logs.get("kl"), (int, float)):
            live["kl"] = float(logs["kl"])
        verdict = hacking_verdict(first_reward=self.first_reward, reward=reward, empty=live.get("emptyFraction"),
                                  truncated=live.get("truncatedFraction"), kl=live.get("kl"), max_kl=self.rl.max_kl)
        metrics = {**self.ctx.reporter.record.metrics, **live, **verdict}
        self.ctx.report(force=bool(verdict), metrics=metrics)
        if verdict:
            message = describe(verdict, metrics, self.rl.max_kl)
            log.warning("rlhf: reward hacking at step %d: %s", state.global_step, message)
            if self.rl.stop_on_hacking and self.stopped is None:
                self.stopped = f"stopped at step {state.global_step} (rl.stopOnHacking): {message}"
                control.should_training_stop = True

    def raise_if_stopped(self, stage: str) -> None:
        if self.stopped:
            raise StageError(f"stage {stage!r} {self.stopped}", REASON_REWARD_HACKING)
