"""The held-out watch of an rlhf stage: is the policy getting better by something it is not optimised on?

    watch = HeldOutWatch(ctx, rl, rewards, audit, held_out, tokenizer)
    first = watch.evaluate(policy, step=0)          # the starting policy: every later point compares to it
    ... training calls it every rl.auditSteps steps (a TrainerCallback; PPO fires the same events) ...
    watch.verdict()                                  # {"rewardOveroptimized": 1.0, ...} or {}

Each evaluation generates greedy completions of the same held-out prompts and records, as one
point: the optimised reward (the weighted sum of `rl.rewards`), the audit (`rl.audit`, a reward
the policy never saw), exact match against the prompts' references when they have them, and
the number of distinct answers. The verdicts (Gao et al. 2022: the gold reward falls while the
proxy keeps rising):

- `rewardOveroptimized`: the optimised reward rose while the audit fell `rl.auditPatience`
  evaluations in a row, or fell below its starting value by more than two standard errors;
- `groundTruthFell`: the reward rose while held-out exact match fell below the starting
  policy's by more than two standard errors of a proportion (at least one prompt);
- `completionsDegenerate`: the reward rose while the distinct answers across prompts shrank to a
  quarter of the starting policy's (or to one answer for every prompt).

Margins of two standard errors keep a held-out set's noise from raising a warning on a run that
is fine; the planted failures they exist for fall by far more. The point with the best audit
score is saved to `<stage>/audit-best/` (with `audit-best.json`: step and score), so that
`rl.selectBy: audit` can make it the stage's model, and a run stopped for hacking still leaves it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback

from ..evaluation.generative import normalise
from ..rewards.sources import REFERENCE, Reward, score_all

log = logging.getLogger(__name__)
AUDIT_BEST_DIR = "audit-best"
AUDIT_BEST_FILE = "audit-best.json"
REWARD_RISE = 1e-6
DEGENERATE_SHARE = 0.25  # distinct answers down to this share of the starting policy's


@dataclass
class HeldOut:
    """The held-out prompts, with their other columns (the reference, renamed `reference`)."""

    prompts: list
    columns: dict[str, list]

    @property
    def references(self) -> list | None:
        return self.columns.get(REFERENCE)


@dataclass
class Point:
    step: int
    reward: float  # mean weighted optimised reward
    reward_means: dict[str, float]
    audit: float | None = None
    audit_se: float | None = None  # standard error of the audit's mean
    exact_match: float | None = None
    distinct: int = 0
    n: int = 0
    empty_fraction: float = 0.0
    truncated_fraction: float = 0.0
    mean_length: float = 0.0


def verdicts(points: list[Point], patience: int) -> dict[str, float]:
    """The flags that hold on the points so far (the first is the starting policy)."""
    if len(points) < 2:
        return {}
    first, last = points[0], points[-1]
    if not last.reward > first.reward + REWARD_RISE:
        return {}
    found = {}
    if last.audit is not None and first.audit is not None:
        tail = points[-(patience + 1):]
        falling = len(tail) == patience + 1 and all(b.audit < a.audit for a, b in zip(tail, tail[1:]))
        below = last.audit < first.audit - 2 * (first.audit_se or 0.0)
        if (falling and last.reward > tail[0].reward) or below:
            found["rewardOveroptimized"] = 1.0
    if last.exact_match is not None and first.exact_match is not None and first.n:
        p = first.exact_match
        margin = max(1 / first.n, 2 * math.sqrt(p * (1 - p) / first.n))
        if last.exact_match < p - margin + 1e-12:
            found["groundTruthFell"] = 1.0
    if degenerate(first.distinct, last.distinct):
        found["completionsDegenerate"] = 1.0
    return found


def degenerate(first_distinct: int, distinct: int) -> bool:
    """Distinct answers collapsed: to a quarter of the start's, or to a single one."""
    return first_distinct > 1 and (distinct < DEGENERATE_SHARE * first_distinct or distinct == 1)


class HeldOutWatch(TrainerCallback):
    def __init__(self, ctx, rl, rewards: list[Reward], audit: list[Reward], held_out: HeldOut, tokenizer):
        self.ctx, self.rl, self.rewards, self.audit = ctx, rl, rewards, audit
        self.held_out, self.tokenizer = held_out, tokenizer
        self.every = rl.audit_steps or ctx.training.logging_steps
        self.points: list[Point] = []
        self.best = read_best(ctx.stage_dir)  # survives a restart: the folder is the stage's, not the attempt's

    @property
    def has_references(self) -> bool:
        return self.held_out.references is not None

    def evaluate(self, model, step: int) -> Point:
        from ..evaluation.completions import completion_stats
        from ..scoring import generate_counted

        was_training = model.training
        texts, counts = generate_counted(model, self.tokenizer, self.held_out.prompts, self.rl.max_completion_length)
        model.train(was_training)
        prompts, columns = self.held_out.prompts, self.held_out.columns
        totals, means = score_all(self.rewards, prompts, texts, columns)
        stats = completion_stats(counts, self.rl.max_completion_length, texts)
        point = Point(step, _mean(totals), means, n=len(texts), distinct=len({normalise(t) for t in texts}),
                      empty_fraction=stats["emptyFraction"], truncated_fraction=stats["truncatedFraction"],
                      mean_length=stats["meanCompletionLength"])
        if self.audit:
            scores, _ = score_all(self.audit, prompts, texts, columns)
            point.audit, point.audit_se = _mean(scores), _standard_error(scores)
        if self.has_references:
            from .generative import exact_match

            point.exact_match = _mean([exact_match(t, str(r)) for t, r in zip(texts, self.held_out.references)])
        self.points.append(point)
        self._log(point)
        if point.audit is not None and (self.best is None or point.audit > self.best["audit"]):
            self._save_best(model, point)
        return point

    def verdict(self) -> dict[str, float]:
        return verdicts(self.points, self.rl.audit_patience)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is None or state.global_step % self.every or not self.points:
            return
        if self.points[-1].step == state.global_step:
            return
        self.evaluate(model, state.global_step)
        found = self.verdict()
        self.ctx.report(force=bool(found), metrics={**self.ctx.reporter.record.metrics, **self.metrics(), **found})

    def metrics(self) -> dict[str, float]:
        """The latest point as metrics, beside the starting policy's."""
        first, last = self.points[0], self.points[-1]
        out = {"baselineMeanReward": first.reward, "meanReward": last.reward,
               "baselineHeldOutDistinct": float(first.distinct), "heldOutDistinct": float(last.distinct)}
        if last.audit is not None:
            out.update(baselineAuditScore=first.audit, auditScore=last.audit)
        if self.best is not None:
            out.update(bestAuditScore=self.best["audit"], bestAuditStep=float(self.best["step"]))
        if last.exact_match is not None:
            out.update(baselineHeldOutExactMatch=first.exact_match, heldOutExactMatch=last.exact_match)
        return out

    # ---- what the stage leaves -------------------------------------------------------------------

    def _log(self, point: Point) -> None:
        """One line of the attempt's metrics.jsonl, so the held-out curves are plotted with the training ones."""
        log.info("rlhf: held-out at step %d: reward %.4g%s%s, %d distinct answers of %d", point.step, point.reward,
                 f", audit {point.audit:.4g}" if point.audit is not None else "",
                 f", exact match {point.exact_match:.3f}" if point.exact_match is not None else "", point.distinct, point.n)
        if not self.ctx.is_main_process:
            return
        line = {"held_out_reward": point.reward, "held_out_distinct": point.distinct / max(1, point.n)}
        line.update({f"held_out_rewards/{k}": v for k, v in point.reward_means.items()})
        if point.audit is not None:
            line["held_out_audit"] = point.audit
        if point.exact_match is not None:
            line["held_out_exact_match"] = point.exact_match
        from ..callbacks import MetricsLogCallback
        from ..metrics import process_metrics

        if (registry := process_metrics()) is not None:  # Prometheus: refinery_trainer_held_out{measure=...}
            registry.on_log(line)
        MetricsLogCallback(self.ctx).append(point.step, line)

    def _save_best(self, model, point: Point) -> None:
        self.best = {"step": point.step, "audit": point.audit}
        if not self.ctx.is_main_process:
            return
        from .. import checkpoints as ckpt

        folder = Path(self.ctx.stage_dir) / AUDIT_BEST_DIR
        tmp = folder.with_name(f".{AUDIT_BEST_DIR}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)  # a LoRA model: its adapter (restored into the model by `restore_best`)
        self.tokenizer.save_pretrained(tmp)
        (tmp / AUDIT_BEST_FILE).write_text(json.dumps(self.best) + "\n")
        ckpt.fsync_tree(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        log.info("rlhf: best audit score so far (%.4g) at step %d, saved to %s", point.audit, point.step, folder)


def read_best(stage_dir) -> dict | None:
    try:
        return json.loads((Path(stage_dir) / AUDIT_BEST_DIR / AUDIT_BEST_FILE).read_text())
    except (OSError, ValueError):
        return None


def restore_best(model, stage_dir) -> None:
    """Load the audit's best weights (saved by the watch) into `model`, in place."""
    folder = Path(stage_dir) / AUDIT_BEST_DIR
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        set_peft_model_state_dict(model, load_peft_weights(str(folder)))
        return
    from safetensors.torch import load_file

    state = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(load_file(shard))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if unexpected or any(k not in tied and not k.endswith("lm_head.weight") for k in missing):
        raise RuntimeError(f"{folder}: the saved weights do not fit the model (missing {missing}, unexpected {unexpected})")
    model.tie_weights()


def _mean(values: list[float]) -> float:
    return sum(values) / max(1, len(values))


def _standard_error(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1) / n)

