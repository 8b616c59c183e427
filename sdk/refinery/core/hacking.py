"""The pipeline's `RewardHacking` warning condition, from what rlhf stages report (pure).

An rlhf stage reports its verdicts as metrics, 1.0 when true — live while it trains, and in its
final result (refinery_trainer/evaluation/hacking.py and audit.py):

- `rewardOveroptimized`: the reward rose while the audit (`rl.audit`, a judge the policy is not
  optimised against) fell — the proxy keeps rising while the gold reward falls;
- `groundTruthFell`: the reward rose while held-out exact match against the prompts' references fell;
- `completionsDegenerate`: the reward rose while the answers became alike (distinct answers collapsed);
- `completionsCollapsed`: the reward rose while nearly every completion came out empty, or every
  one was cut at `rl.maxCompletionLength`;
- `klExceeded`: KL above `rl.maxKl`.

The condition is True while any stage says so, with every verdict in its message; either way the
message says what could not be checked (no `rl.maxKl`, no `rl.audit`, no references), so an
all-clear never implies a check that did not run. It is a warning: the stage goes on unless
`rl.stopOnHacking` stopped it (reason RewardHacking). `spec.export` is held back (reason
GateNotMet) while an rlhf stage upstream of the exported one ended with a verdict, unless
`spec.export.allowRewardHacking` says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..api.v1alpha1 import Phase, PipelineStatus, Stage, StageStatus, StageType, TrainingPipeline
from .conditions import set_condition

REWARD_HACKING = "RewardHacking"
REASON_REWARD_OVEROPTIMIZED = "RewardOveroptimized"
REASON_GROUND_TRUTH_FELL = "GroundTruthFell"
REASON_COMPLETIONS_DEGENERATE = "CompletionsDegenerate"
REASON_COMPLETIONS_COLLAPSED = "CompletionsCollapsed"
REASON_KL_EXCEEDED = "KlExceeded"
REASON_NO_HACKING = "NoRewardHacking"


def _figures(metrics: dict[str, float], names: tuple[str, ...]) -> str:
    return ", ".join(f"{k} {metrics[k]:.3g}" for k in names if k in metrics)


def verdict_texts(metrics: dict[str, float], max_kl: float | None) -> list[tuple[str, str]]:
    """(reason, what happened, with its figures) of every verdict the metrics flag, most telling first."""
    flagged = [
        ("rewardOveroptimized", REASON_REWARD_OVEROPTIMIZED, "the reward rose while the audit fell",
         ("baselineMeanReward", "meanReward", "baselineAuditScore", "auditScore", "bestAuditScore", "bestAuditStep")),
        ("groundTruthFell", REASON_GROUND_TRUTH_FELL, "the reward rose while held-out exact match fell",
         ("baselineMeanReward", "meanReward", "baselineHeldOutExactMatch", "heldOutExactMatch")),
        ("completionsDegenerate", REASON_COMPLETIONS_DEGENERATE, "the reward rose while the answers became alike",
         ("trainReward", "meanReward", "distinctFraction", "baselineHeldOutDistinct", "heldOutDistinct")),
        ("completionsCollapsed", REASON_COMPLETIONS_COLLAPSED, "the reward rose while completions collapsed (empty or truncated)",
         ("trainReward", "meanReward", "emptyFraction", "heldOutEmptyFraction", "truncatedFraction", "meanCompletionLength")),
    ]
    found = [(reason, f"{what}: {_figures(metrics, figures)}")
             for flag, reason, what, figures in flagged if metrics.get(flag, 0.0) >= 1.0]
    if metrics.get("klExceeded", 0.0) >= 1.0:
        found.append((REASON_KL_EXCEEDED, f"KL {metrics.get('kl', float('nan')):.3g} exceeds rl.maxKl {max_kl:g}"))
    return found


def hacking_findings(name: str, metrics: dict[str, float], max_kl: float | None) -> list[tuple[str, str]]:
    """(reason, message naming the stage) of every verdict the stage's metrics flag, most telling first."""
    return [(reason, f"stage {name!r}: {text}") for reason, text in verdict_texts(metrics, max_kl)]


def hacking_message(name: str, metrics: dict[str, float], max_kl: float | None) -> tuple[str, str] | None:
    """(reason, message) of the stage's most telling verdict, else None."""
    found = hacking_findings(name, metrics, max_kl)
    return found[0] if found else None


def unchecked(stage: Stage, metrics: dict[str, float]) -> list[str]:
    """What the stage could not check, and why."""
    rl = stage.rl
    missing = []
    if rl is None or rl.max_kl is None:
        missing.append("KL (no rl.maxKl)")
    if rl is None or not rl.audit:
        missing.append("over-optimisation against an independent judge (no rl.audit)")
    if metrics and "heldOutExactMatch" not in metrics:
        missing.append("ground truth (the prompts have no reference column)")
    return missing


def set_hacking_condition(pipeline: TrainingPipeline, status: PipelineStatus, stamp: str) -> None:
    """Set (or clear) `RewardHacking` in place; added only once an rlhf stage has reported metrics."""
    rlhf = [s for s in pipeline.spec.stages if s.type == StageType.rlhf]
    found, notes = [], []
    for stage in rlhf:
        current = status.stage(stage.name)
        metrics = current.metrics if current is not None else {}
        if not metrics:
            continue
        found += hacking_findings(stage.name, metrics, stage.rl.max_kl if stage.rl else None)
        if missing := unchecked(stage, metrics):
            notes.append(f"stage {stage.name!r} did not check {', '.join(missing)}")
    reported = any((status.stage(s.name) is not None and status.stage(s.name).metrics) for s in rlhf)
    note = ("; " + "; ".join(notes)) if notes else ""
    if found:
        set_condition(status.conditions, REWARD_HACKING, True, found[0][0], "; ".join(m for _, m in found) + note, stamp,
                      pipeline.metadata.generation)
    elif reported or any(c.type == REWARD_HACKING for c in status.conditions):
        set_condition(status.conditions, REWARD_HACKING, False, REASON_NO_HACKING,
                      "no rlhf stage reports reward hacking (checked: collapsed and alike completions"
                      + (", KL" if any(s.rl and s.rl.max_kl for s in rlhf) else "")
                      + (", the audit" if any(s.rl and s.rl.audit for s in rlhf) else "")
                      + ", held-out exact match" * any("heldOutExactMatch" in ((status.stage(s.name) or StageStatus(name=s.name)).metrics) for s in rlhf)
                      + ")" + note, stamp, pipeline.metadata.generation)


def export_hold(pipeline: TrainingPipeline, stages: Mapping[str, StageStatus]) -> tuple[str, str] | None:
    """(stage, message) when spec.export must wait: an rlhf stage the exported model descends from
    (or is) succeeded with a reward-hacking verdict, and the user did not allow it."""
    export = pipeline.spec.export
    if export is None or export.allow_reward_hacking:
        return None
    by_name = {s.name: s for s in pipeline.spec.stages}
    lineage, todo = set(), [export.stage]
    while todo:
        name = todo.pop()
        if name in lineage or name not in by_name:
            continue
        lineage.add(name)
        todo += by_name[name].dependencies
    for stage in pipeline.spec.stages:
        status = stages.get(stage.name)
        if stage.type != StageType.rlhf or stage.name not in lineage or status is None or status.phase != Phase.succeeded:
            continue
        if found := hacking_findings(stage.name, status.metrics, stage.rl.max_kl if stage.rl else None):
            return stage.name, (f"export held back: {found[0][1]} (set spec.export.allowRewardHacking: true to export "
                                "it anyway)")
    return None
