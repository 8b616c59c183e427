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

from refinery.api.rewards import WATCH_NAME

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
    """What happened, with its figures: the same words as the pipeline's RewardHacking condition."""
    from refinery.core.hacking import verdict_texts

    return "; ".join(text for _, text in verdict_texts({**metrics, **verdict}, max_kl))


class CompletionWatch:
    """A reward function of weight zero in TRL's list: it adds nothing to any reward, and records what
    each batch of completions looks like (TRL logs lengths and clipping, not emptiness or sameness):
    the share of empty completions, the share of distinct ones across the batch, and within each
    prompt's group of `group` completions (TRL samples a prompt's group consecutively)."""

    __name__ = WATCH_NAME  # TRL names an instance's log keys after it (rewards/completion_watch/mean)

    def __init__(self, group: int = 1) -> None:
        self.group = max(1, group)
        self.empty_fraction: float | None = None
        self.distinct: int | None = None  # distinct completions in the batch
        self.first_distinct: int | None = None
        self.distinct_fraction: float | None = None
        self.group_distinct_fraction: float | None = None

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        self.observe([c if isinstance(c, str) else " ".join(m.get("content", "") for m in c) for c in completions])
        return [0.0] * len(completions)

    def observe(self, texts: list[str]) -> None:
        from .generative import normalise

        n = max(1, len(texts))
        self.empty_fraction = sum(not t.strip() for t in texts) / n
        keys = [normalise(t) for t in texts]
        self.distinct = len(set(keys))
        if self.first_distinct is None:
            self.first_distinct = self.distinct
        self.distinct_fraction = self.distinct / n
        groups = [keys[i:i + self.group] for i in range(0, len(keys), self.group)]
        self.group_distinct_fraction = sum(len(set(g)) / len(g) for g in groups) / max(1, len(groups))

    def live(self) -> dict[str, float]:
        out = {}
        if self.empty_fraction is not None:
            out["emptyFraction"] = self.empty_fraction
        if self.distinct_fraction is not None:
            out.update(distinctFraction=self.distinct_fraction, groupDistinctFraction=self.group_distinct_fraction)
        return out


class HackingWatch(TrainerCallback):
    """Reads each training log: reports the completion statistics and the verdict; stops on it if asked."""

    def __init__(self, ctx, rl, completions: CompletionWatch, held_out=None):
        self.ctx, self.rl, self.completions, self.held_out = ctx, rl, completions, held_out
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
        live.update(self.completions.live())
        if isinstance(logs.get("kl"), (int, float)):
            live["kl"] = float(logs["kl"])
        # Each reward's own mean (TRL: rewards/<name>/mean), so users see which part moves.
        live.update({key.removesuffix("/mean"): float(v) for key, v in logs.items()
                     if key.startswith("rewards/") and key.endswith("/mean") and isinstance(v, (int, float))
                     and key != f"rewards/{WATCH_NAME}/mean"})
        verdict = hacking_verdict(first_reward=self.first_reward, reward=reward, empty=live.get("emptyFraction"),
                                  truncated=live.get("truncatedFraction"), kl=live.get("kl"), max_kl=self.rl.max_kl)
        if reward > self.first_reward + REWARD_RISE and self.completions.first_distinct is not None:
            from .audit import degenerate

            if degenerate(self.completions.first_distinct, self.completions.distinct):
                verdict["completionsDegenerate"] = 1.0
        if self.held_out is not None:  # the held-out watch's verdicts, from its latest evaluation
            verdict.update(self.held_out.verdict())
        metrics = {**self.ctx.reporter.record.metrics, **live, **verdict}
        self.ctx.report(force=bool(verdict), metrics=metrics)
        if verdict:
            message = describe(verdict, metrics, self.rl.max_kl)
            log.warning("rlhf: reward hacking at step %d: %s", state.global_step, message)
            if self.rl.stop_on_hacking and self.stopped is None:
                self.stopped = f"stopped at step {state.global_step} (rl.stopOnHacking), no model saved: {message}"
                best = self.held_out.best if self.held_out is not None else None
                if best is not None:
                    self.stopped += (f"; the best audit score ({best['audit']:.4g}) was at step {best['step']}, "
                                     f"saved in {self.ctx.stage_dir}/audit-best")
                control.should_training_stop = True

    def raise_if_stopped(self, stage: str) -> None:
        if self.stopped:
            raise StageError(f"stage {stage!r} {self.stopped}", REASON_REWARD_HACKING)
