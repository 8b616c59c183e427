"""Transition rules (`oldSelf`): a stage's identity cannot change on an update, evaluated offline
the way the API server does (old and new stage correlated by name, `stages` being a map list)."""

from __future__ import annotations

import copy

import pytest

from refinery.api.admission import admission_problems, openapi_schema
from tests.builders import chat_pipeline


def edited(edit):
    old = chat_pipeline("p").manifest()
    new = copy.deepcopy(old)
    edit(new["spec"]["stages"])
    return old, new


@pytest.mark.parametrize(("what", "edit", "problem"), [
    ("type", lambda s: s[2].update(type="dpo"), "spec.stages[2]: a stage's `type` cannot change"),
    ("from", lambda s: s[3].update({"from": "pretrain"}), "spec.stages[3]: a stage's `from` cannot change"),
    ("data", lambda s: s[1]["data"].update(path="data/other.jsonl"), "spec.stages[1]: a stage's `data` cannot change"),
    ("model", lambda s: s[0]["model"]["config"].update(hiddenSize=64), "spec.stages[0]: a stage's `model` cannot change"),
    ("reordered and changed", lambda s: (s.reverse(), s[0].update(rewardModel="sft")),
     "spec.stages[0]: a stage's `rewardModel` cannot change"),
])
def test_a_stage_identity_is_immutable(what, edit, problem):
    old, new = edited(edit)
    problems = admission_problems(new, old)
    assert any(p.startswith(problem) for p in problems), problems
    assert not [p for p in admission_problems(new) if "cannot change" in p]  # a create has no oldSelf


@pytest.mark.parametrize(("what", "edit"), [
    ("training", lambda s: s[1].update(training={"maxSteps": 99})),
    ("retries and gate", lambda s: s[2].update(retries={"application": 3}, gate={"metric": "evalAccuracy", "value": 0.8})),
    ("a new stage", lambda s: s.append({"name": "dpo", "type": "dpo", "from": "sft", "data": {"path": "data/p.jsonl"}})),
    ("a removed stage", lambda s: s.pop()),
    ("reordered", lambda s: s.reverse()),
])
def test_what_may_change_on_an_update(what, edit):
    old, new = edited(edit)
    assert admission_problems(new, old) == []


def test_stages_are_a_map_list_keyed_by_name():
    stages = openapi_schema()["properties"]["spec"]["properties"]["stages"]
    assert stages["x-kubernetes-list-type"] == "map" and stages["x-kubernetes-list-map-keys"] == ["name"]
    assert "name" in stages["items"]["required"]  # a map key must be required


def test_transition_rules_cost_is_bounded_by_the_fields_they_compare():
    """`self.data == oldSelf.data` costs at most the size of `data`: every string it compares is
    bounded, so the per-stage cost times MAX_STAGES stays far below the per-rule budget (10^7)."""
    from refinery.api.base import MAX_STAGES

    def bound(node):
        if node.get("type") == "string":
            assert "maxLength" in node or "enum" in node, node
            return node.get("maxLength", 16)
        if node.get("type") == "object":
            return sum(bound(sub) for sub in (node.get("properties") or {}).values()) + 1
        return 1

    stage = openapi_schema()["properties"]["spec"]["properties"]["stages"]["items"]
    for field in ("data", "model"):
        assert MAX_STAGES * bound(stage["properties"][field]) < 10_000_000 // 100
