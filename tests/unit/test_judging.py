"""CircularJudge: an eval stage judged by the reward model a model it scores was optimised against."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from refinery.api.evaluation import GenerateEval
from refinery.api.v1alpha1 import PipelineStatus, TrainingPipeline
from refinery.core.events import pipeline_events
from refinery.core.judging import circular_footnotes, circular_judgements, set_circular_judge_condition
from refinery.core.plan import Observed, plan
from tests.builders import chat_pipeline

ANSWERS = "data/answers_eval.jsonl"


def with_eval(generate: dict, models=("sft", "rlhf"), extra=()):
    """The chat recipe, optional extra stages, and an eval stage scoring `models`."""
    builder = chat_pipeline("p").stage("reward2", "reward", from_="sft")
    for name, type_, kw in extra:
        builder = builder.stage(name, type_, **kw)
    manifest = builder.manifest()
    manifest["spec"]["stages"].append({"name": "eval", "type": "eval",
                                       "eval": {"models": list(models), "generate": {"path": ANSWERS, **generate}}})
    return TrainingPipeline.model_validate(manifest)


CASES = [
    # (what, generate, models, extra stages, expected (model, judge, optimised, columns))
    ("the judge rlhf was optimised against", {"rewardModel": "reward", "baseline": "sft"}, ("sft", "rlhf"), (),
     [("rlhf", "reward", "rlhf", ("meanReward", "winRate"))]),
    ("no baseline: only meanReward", {"rewardModel": "reward"}, ("rlhf",), (), [("rlhf", "reward", "rlhf", ("meanReward",))]),
    ("a second reward stage judges", {"rewardModel": "reward2", "baseline": "sft"}, ("sft", "rlhf"), (), []),
    ("verifiers only", {"rewards": [{"exactMatch": {}}]}, ("sft", "rlhf"), (), []),
    ("the gamed model among eval.generate.rewards", {"rewards": [{"exactMatch": {}}, {"model": "reward", "name": "rm"}]},
     ("rlhf",), (), [("rlhf", "reward", "rlhf", ("rm",))]),
    ("a model trained from the rlhf stage inherits it", {"rewardModel": "reward"}, ("polish",),
     [("polish", "sft", {"from_": "rlhf"})], [("polish", "reward", "rlhf", ("meanReward",))]),
    ("rl.rewards with the model and a verifier", {"rewardModel": "reward"}, ("grpo",),
     [("grpo", "rlhf", {"from_": "sft", "rl": {"rewards": [{"model": "reward"}, {"exactMatch": {}}]}})],
     [("grpo", "reward", "grpo", ("meanReward",))]),
    ("rl.audit is not what it was optimised against", {"rewardModel": "reward2"}, ("audited",),
     [("audited", "rlhf", {"from_": "sft", "reward_model": "reward", "rl": {"audit": [{"model": "reward2"}]}})], []),
]


@pytest.mark.parametrize(("what", "generate", "models", "extra", "expected"), CASES, ids=[c[0] for c in CASES])
def test_circular_judgements(what, generate, models, extra, expected):
    found = circular_judgements(with_eval(generate, models, extra).spec)
    assert [(j.model, j.judge, j.optimised, j.columns) for j in found] == expected


def test_the_condition_the_event_and_the_footnotes():
    pipeline = with_eval({"rewardModel": "reward", "baseline": "sft"})
    status = PipelineStatus()
    set_circular_judge_condition(pipeline, status, "t0")
    (condition,) = status.conditions
    assert (condition.type, condition.status, condition.reason) == ("CircularJudge", "True", "CircularJudge")
    for words in ("eval stage 'eval'", "reward model 'reward'", "stage 'rlhf' was optimised against",
                  "rlhf.meanReward and rlhf.winRate", "not evidence"):
        assert words in condition.message
    (event,) = pipeline_events(PipelineStatus(), status)
    assert (event.type, event.reason, event.message) == ("Warning", "CircularJudge", condition.message)
    assert pipeline_events(status, status) == []  # posted once, not on every reconcile
    assert circular_footnotes(pipeline.spec, "eval") == {
        "rlhf.meanReward": "judged by the reward model rlhf was optimised against (reward)",
        "rlhf.winRate": "judged by the reward model rlhf was optimised against (reward)",
    }
    # The spec changed to a judge rlhf was not optimised against: cleared, not left standing.
    fixed = with_eval({"rewardModel": "reward2", "baseline": "sft"})
    set_circular_judge_condition(fixed, status, "t1")
    assert (status.conditions[0].status, status.conditions[0].reason) == ("False", "NoCircularJudge")


def test_plan_sets_it_before_any_stage_ran_and_not_on_other_pipelines():
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    circular = plan(with_eval({"rewardModel": "reward"}), Observed(), "/w", now).status
    assert [c.status for c in circular.conditions if c.type == "CircularJudge"] == ["True"]
    clean = plan(with_eval({"rewardModel": "reward2"}), Observed(), "/w", now).status
    assert all(c.type != "CircularJudge" for c in clean.conditions)


def test_generate_eval_settings():
    assert GenerateEval(path=ANSWERS).correctness is None  # the built-in exact match
    sources = [{"length": {"target": 3}}, {"regex": {"pattern": "x"}}, {"exactMatch": {}}]
    assert GenerateEval(path=ANSWERS, rewards=sources).correctness.kind == "exactMatch"
    assert GenerateEval(path=ANSWERS, rewards=sources[:2]).correctness.kind == "regex"
    assert GenerateEval(path=ANSWERS, samples=4, temperature=1.0).samples == 4
    with pytest.raises(ValidationError, match="needs a temperature above 0"):
        GenerateEval(path=ANSWERS, samples=4)
    with pytest.raises(ValidationError, match="would hide the built-in score"):
        GenerateEval(path=ANSWERS, rewards=[{"contains": {}, "name": "winRate"}])
    with pytest.raises(ValidationError, match="two rewards are named"):
        GenerateEval(path=ANSWERS, rewards=[{"contains": {}}, {"contains": {}}])


def test_local_modes_eval_table_marks_the_circular_columns():
    from refinery_operator.local.display import eval_table

    pipeline = with_eval({"rewardModel": "reward", "baseline": "sft"})
    metrics = {f"{m}.{k}": v for m in ("sft", "rlhf") for k, v in (("exactMatch", 0.5), ("meanReward", 1.0), ("winRate", 0.5))}
    status = PipelineStatus.model_validate({"stages": [{"name": "eval", "metrics": metrics}]})
    lines = eval_table(status, pipeline).strip().splitlines()
    assert lines[1].split() == ["MODEL", "exactMatch", "meanReward*", "winRate*"]
    assert lines[4:] == ["* rlhf.meanReward, rlhf.winRate: judged by the reward model rlhf was optimised against (reward)"]
    fixed = with_eval({"rewardModel": "reward2", "baseline": "sft"})
    assert "*" not in eval_table(status, fixed)
