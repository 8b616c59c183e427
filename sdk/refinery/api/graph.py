"""Checks of the stage graph shared by pydantic validation, `refinery validate` and the operator:
references name existing stages, rewardModel names a reward stage, no cycles."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import StageType

if TYPE_CHECKING:
    from .v1alpha1 import Stage



def stage_graph_problems(stages: list[Stage]) -> list[str]:
    """Every reason the stages do not form a valid DAG, as messages naming the field."""
    problems: list[str] = []
    names = [s.name for s in stages]
    by_name = {s.name: s for s in stages}
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"stages: stage names must be unique: {dup!r} appears {names.count(dup)} times")
    for i, s in enumerate(stages):
        refs = [("from", s.from_), ("rewardModel", s.reward_model)]
        refs += [(f"dependsOn[{j}]", d) for j, d in enumerate(s.depends_on or [])]
        refs += eval_references(s) + rl_references(s)
        for field, ref in refs:
            if ref is None:
                continue
            if ref not in by_name:
                problems.append(f"stages[{i}].{field}: no stage named {ref!r}")
            elif ref == s.name:
                problems.append(f"stages[{i}].{field}: a stage cannot depend on itself")
        for field, ref in [("rewardModel", s.reward_model), *rl_references(s)]:
            if ref in by_name and by_name[ref].type != StageType.reward:
                problems.append(f"stages[{i}].{field}: stage {ref!r} is not a reward stage")
        problems += eval_type_problems(i, s, by_name)
        if s.depends_on is not None:
            for field, ref in refs[:2] + eval_references(s) + rl_references(s):
                if ref and ref not in s.depends_on:
                    problems.append(f"stages[{i}].dependsOn: must include {ref!r} (named in {field})")
    if not problems:
        cycle = _find_cycle({s.name: s.dependencies for s in stages})
        if cycle:
            problems.append("stages: dependency cycle " + " -> ".join(cycle))
    return problems


def rl_references(stage: Stage) -> list[tuple[str, str]]:
    """(field, stage name) of every reward stage an rlhf stage's `rl.rewards` and `rl.audit` name."""
    rl = getattr(stage, "rl", None)
    if rl is None:
        return []
    return [(f"rl.{field}[{j}].model", source.model) for field, sources in (("rewards", rl.rewards), ("audit", rl.audit))
            for j, source in enumerate(sources or []) if source.model]


def eval_references(stage: Stage) -> list[tuple[str, str]]:
    """(field, stage name) of every stage an eval stage reads a model of."""
    spec = stage.eval_
    if spec is None:
        return []
    refs = [(f"eval.models[{j}]", m) for j, m in enumerate(spec.models)]
    if spec.generate is not None:
        refs += [(f"eval.generate.{f}", v) for f, v in (("rewardModel", spec.generate.reward_model),
                                                        ("baseline", spec.generate.baseline)) if v]
        refs += [(f"eval.generate.rewards[{j}].model", s.model) for j, s in enumerate(spec.generate.rewards or [])
                 if s.model]
    return refs


def eval_type_problems(i: int, stage: Stage, by_name: dict) -> list[str]:
    """An eval stage scores language models, judged by a reward stage."""
    problems = []
    for field, ref in eval_references(stage):
        other = by_name.get(ref)
        if other is None:
            continue
        wants_reward = field == "eval.generate.rewardModel" or field.startswith("eval.generate.rewards[")
        if wants_reward and other.type != StageType.reward:
            problems.append(f"stages[{i}].{field}: stage {ref!r} is not a reward stage")
        elif not wants_reward and other.type in (StageType.reward, StageType.eval):
            problems.append(f"stages[{i}].{field}: stage {ref!r} is a {other.type} stage, not a language model")
    return problems


def _find_cycle(edges: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in edges.get(node, []):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in edges:
        if node not in state and (found := visit(node)):
            return found
    return None
