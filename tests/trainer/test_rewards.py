"""Reward sources on their own: the verifiers score what they say, a user's function that misbehaves
fails with its message (never a silent zero), and the held-out watch's verdicts fire on the
planted patterns and stay quiet within a held-out set's noise."""

from __future__ import annotations

import pytest

from refinery_trainer.evaluation.audit import Point, degenerate, verdicts
from refinery_trainer.rewards import verifiers
from refinery_trainer.rewards.user import BadRewardFunction, UserFunction


def test_verifiers_score_against_the_reference():
    assert verifiers.exact_match([" 12", "12!", " 13", "twelve"], [" 12"] * 4) == [1.0, 1.0, 0.0, 0.0]
    assert verifiers.contains([" it is 12 then", " 1 2"], ["12", "12"]) == [1.0, 0.0]
    # math-verify finds the final answer and compares values, not strings.
    assert verifiers.numeric(["The answer is 0.5", " 1/2", "$\\frac{1}{2}$", " 0.6", " moo", ""], ["1/2"] * 6) == \
        [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert verifiers.matches(r"^ \d+$")([" 12", "twelve", " 12 "]) == [1.0, 0.0, 0.0]
    assert verifiers.length_penalty(4, 0.5)(["abcd", "abcdef"]) == [0.0, -1.0]


def write(tmp_path, body: str):
    path = tmp_path / "rewards.py"
    path.write_text(body)
    return path


def call(tmp_path, body: str, timeout_s: float = 5.0, completions=(" a", " b")):
    fn = UserFunction.load(write(tmp_path, body), "score", timeout_s=timeout_s, stage="rlhf")
    return fn(["p", "q"], list(completions), [" a", " c"], {"topic": ["x", "y"]})


def test_a_user_function_gets_prompts_completions_references_and_columns(tmp_path):
    body = "def score(prompts, completions, references, topic):\n    return [float(c == r) + (t == 'y') for c, r, t in zip(completions, references, topic)]\n"
    assert call(tmp_path, body) == [1.0, 1.0]


@pytest.mark.parametrize(("body", "says"), [
    ("def score(prompts, completions, references, **kw):\n    return 1 / 0\n", "raised ZeroDivisionError: division by zero"),
    ("def score(prompts, completions, references, **kw):\n    return 'high'\n", "returned str 'high'"),
    ("def score(prompts, completions, references, **kw):\n    return ['1.0', '0.0']\n", "returned str '1.0' for completion 0"),
    ("def score(prompts, completions, references, **kw):\n    return [1.0]\n", "returned 1 values for 2 completions"),
    ("def score(prompts, completions, references, **kw):\n    return [float('nan'), 1.0]\n", "must be a finite float"),
    ("def score(prompts, completions, references, **kw):\n    while True:\n        pass\n", "longer than timeoutSeconds (0.2 s)"),
    ("import not_a_module\n", "importing"),
    ("def other(*a, **k):\n    return []\n", "defines no function 'score'"),
])
def test_a_user_function_that_misbehaves_fails_with_its_message(tmp_path, body, says):
    with pytest.raises(BadRewardFunction) as err:
        call(tmp_path, body, timeout_s=0.2)
    assert says in err.value.message and err.value.reason == "BadRewardFunction"
    assert "rewards.py:score" in err.value.message


def point(step, reward, audit=None, exact=None, distinct=8, n=64, se=0.05):
    return Point(step, reward, {}, audit=audit, audit_se=se, exact_match=exact, distinct=distinct, n=n)


def test_the_audit_falling_while_the_reward_rises_is_over_optimisation():
    rising_falling = [point(0, 1.0, audit=2.0), point(10, 1.5, audit=1.95), point(20, 2.0, audit=1.9), point(30, 2.5, audit=1.85)]
    assert verdicts(rising_falling[:3], patience=3) == {}  # two falls: not yet
    assert verdicts(rising_falling, patience=3) == {"rewardOveroptimized": 1.0}
    # Once below the start by more than two standard errors, at once.
    assert verdicts([point(0, 1.0, audit=2.0), point(10, 3.0, audit=1.5)], patience=3) == {"rewardOveroptimized": 1.0}
    # Both rising, or the reward not rising: nothing.
    assert verdicts([point(0, 1.0, audit=2.0), point(10, 3.0, audit=2.5)], patience=1) == {}
    assert verdicts([point(0, 1.0, audit=2.0), point(10, 0.5, audit=1.0)], patience=1) == {}
    # Within two standard errors of the start, one fall is noise.
    assert verdicts([point(0, 1.0, audit=2.0), point(10, 3.0, audit=1.95)], patience=3) == {}


def test_exact_match_falling_beyond_noise_is_ground_truth_falling():
    assert verdicts([point(0, 1.0, exact=0.77, n=128), point(10, 2.0, exact=0.04, n=128)], 3) == {"groundTruthFell": 1.0}
    # 0.77 -> 0.74 on 128 prompts is within two standard errors (0.074): quiet.
    assert verdicts([point(0, 1.0, exact=0.77, n=128), point(10, 2.0, exact=0.74, n=128)], 3) == {}
    # A perfect start: a single prompt lost is one prompt more than noise allows (the margin is at least 1/n).
    assert verdicts([point(0, 1.0, exact=1.0, n=64), point(10, 2.0, exact=62 / 64, n=64)], 3) == {"groundTruthFell": 1.0}


def test_one_answer_for_every_prompt_is_degenerate():
    assert degenerate(9, 1) and degenerate(40, 9) and not degenerate(9, 6) and not degenerate(1, 1)
    assert verdicts([point(0, 1.0, distinct=9), point(10, 4.0, distinct=1)], 3) == {"completionsDegenerate": 1.0}
    assert verdicts([point(0, 1.0, distinct=9), point(10, 0.5, distinct=1)], 3) == {}  # the reward fell: not hacking


@pytest.mark.parametrize(("rewards", "audit", "missing_in"), [
    ([{"exactMatch": {}}], None, "training prompts"),  # the optimised reward needs it where it trains
    ([{"regex": {"pattern": "x"}}], [{"numeric": {}}], "held-out prompts"),  # the audit only where it scores
])
def test_verifiers_without_a_reference_column_fail_before_any_model_loads(workspace, rewards, audit, missing_in):
    from refinery_trainer import cli

    from .conftest import read_json, stage_run, write_config, write_jsonl

    prompts = write_jsonl(workspace / "prompts.jsonl", [{"prompt": "What is 1 plus 1?", "answer": " 2"}] * 4)
    with_refs = write_jsonl(workspace / "refs.jsonl", [{"prompt": "What is 1 plus 1?", "reference": " 2"}] * 4)
    train, held_out = (prompts, with_refs) if missing_in == "training prompts" else (with_refs, prompts)
    run = stage_run(workspace, "rl", "rlhf", data={"path": str(train), "evalPath": str(held_out)}, from_="sft",
                    initModel=str(workspace / "no-model-needed"))
    run["stage"]["rl"] = {"rewards": rewards, **({"audit": audit} if audit else {})}
    assert cli.main(["run", "--config", str(write_config(workspace / "rl.yaml", run))]) == 1
    progress = read_json(workspace / "p" / "rl" / "progress.json")
    assert progress["failureReason"] == "BadData", progress
    assert f"the {missing_in}" in progress["message"] and "no 'reference' column" in progress["message"]
    assert "data.referenceField" in progress["message"]
