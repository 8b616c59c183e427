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
        for field, ref in refs:
            if ref is None:
                continue
            if ref not in by_name:
                problems.append(f"stages[{i}].{field}: no stage named {ref!r}")
            elif ref == s.name:
                problems.append(f"stages[{i}].{field}: a stage cannot depend on itself")
        if s.reward_model in by_name and by_name[s.reward_model].type != StageType.reward:
            problems.append(f"stages[{i}].rewardModel: stage {s.reward_model!r} is not a reward stage")
        if s.depends_on is not None:
            for field, ref in refs[:2]:
                if ref and ref not in s.depends_on:
                    problems.append(f"stages[{i}].dependsOn: must include {ref!r} (named in {field})")
    if not problems:
        cycle = _find_cycle({s.name: s.dependencies for s in stages})
        if cycle:
            problems.append("stages: dependency cycle " + " -> ".join(cycle))
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
