"""The pipeline's `RewardHacking` warning condition, from what rlhf stages report (pure).

An rlhf stage reports `completionsCollapsed` (the reward rose while nearly every completion came
out empty, or every one was cut at `rl.maxCompletionLength`) and `klExceeded` (KL above
`rl.maxKl`) as metrics, 1.0 when true — live while it trains, and in its final result
(refinery_trainer/evaluation/hacking.py). The condition is True while any stage says so; it is
only a warning: the stage goes on unless `rl.stopOnHacking` stopped it (reason RewardHacking).
"""

from __future__ import annotations

from ..api.v1alpha1 import PipelineStatus, StageType, TrainingPipeline
from .conditions import set_condition

REWARD_HACKING = "RewardHacking"
REASON_COMPLETIONS_COLLAPSED = "CompletionsCollapsed"
REASON_KL_EXCEEDED = "KlExceeded"
REASON_NO_HACKING = "NoRewardHacking"


def hacking_message(name: str, metrics: dict[str, float], max_kl: float | None) -> tuple[str, str] | None:
    """(reason, message) when the stage's metrics flag reward hacking, else None."""
    if metrics.get("completionsCollapsed", 0.0) >= 1.0:
        figures = ", ".join(f"{k} {metrics[k]:.3g}" for k in ("trainReward", "meanReward", "emptyFraction",
                                                               "heldOutEmptyFraction", "truncatedFraction",
                                                               "meanCompletionLength") if k in metrics)
        return REASON_COMPLETIONS_COLLAPSED, (f"stage {name!r}: the reward rose while completions collapsed "
                                              f"(empty or truncated): {figures}")
    if metrics.get("klExceeded", 0.0) >= 1.0:
        return REASON_KL_EXCEEDED, f"stage {name!r}: KL {metrics.get('kl', float('nan')):.3g} exceeds rl.maxKl {max_kl:g}"
    return None


def set_hacking_condition(pipeline: TrainingPipeline, status: PipelineStatus, stamp: str) -> None:
    """Set (or clear) `RewardHacking` in place; added only once an rlhf stage has reported metrics."""
    rlhf = [s for s in pipeline.spec.stages if s.type == StageType.rlhf]
    found = []
    for stage in rlhf:
        current = status.stage(stage.name)
        if current is not None and (hit := hacking_message(stage.name, current.metrics, stage.rl.max_kl if stage.rl else None)):
            found.append(hit)
    reported = any((status.stage(s.name) is not None and status.stage(s.name).metrics) for s in rlhf)
    if found:
        set_condition(status.conditions, REWARD_HACKING, True, found[0][0], "; ".join(m for _, m in found), stamp,
                      pipeline.metadata.generation)
    elif reported or any(c.type == REWARD_HACKING for c in status.conditions):
        set_condition(status.conditions, REWARD_HACKING, False, REASON_NO_HACKING,
                      "no rlhf stage reports collapsed completions or KL above rl.maxKl", stamp, pipeline.metadata.generation)
