"""The eval stage's pure scores: pass@k is Chen et al. 2021's unbiased estimator."""

from __future__ import annotations

import numpy as np
import pytest

from refinery_trainer.evaluation.generative import by_prompt, pass_at_k
from refinery_trainer.stages.eval import sampled_scores


def chen_et_al(n: int, c: int, k: int) -> float:
    """The paper's numerically stable form (Codex, figure 3), as a reference."""
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


@pytest.mark.parametrize(("n", "c", "k"), [(1, 0, 1), (1, 1, 1), (4, 0, 4), (4, 1, 4), (10, 3, 1), (10, 3, 5), (20, 0, 2)])
def test_pass_at_k_is_the_unbiased_estimator(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(chen_et_al(n, c, k))
    if k == 1:
        assert pass_at_k(n, c, k) == pytest.approx(c / n)  # pass@1 is the share of correct answers


def test_pass_and_mean_at_k_over_prompts():
    # 3 prompts x 4 answers: right 0, 1 and 4 times.
    correct = [0, 0, 0, 0] + [0, 1, 0, 0] + [1, 1, 1, 1]
    assert by_prompt(correct, 4)[1] == [0, 1, 0, 0]
    assert sampled_scores([float(c) for c in correct], 4) == {"passAtK": pytest.approx(2 / 3),
                                                              "meanAtK": pytest.approx(5 / 12)}
    # k = 1: both are the share of right answers (exact match, for the built-in verifier).
    assert sampled_scores([1.0, 0.0, 1.0, 1.0], 1) == {"passAtK": 0.75, "meanAtK": 0.75}
    # Partial credit is not "correct": a verifier must give 1.0 (or more).
    assert sampled_scores([0.5, 0.99], 2)["passAtK"] == 0.0


def test_the_initializer_checks_an_eval_stages_python_verifier(tmp_path):
    from refinery.api.v1alpha1 import Stage
    from refinery_trainer.rewards.user import BadRewardFunction
    from refinery_trainer.sources.preflight import check_pipeline

    (tmp_path / "answers.jsonl").write_text('{"prompt": "What does the cow say?", "reference": " moo"}\n')
    (tmp_path / "rewards.py").write_text("def other(prompts, completions, references, **kw):\n    return [1.0]\n")
    stage = Stage.model_validate({"name": "eval", "type": "eval", "eval": {"models": ["sft"], "generate": {
        "path": "answers.jsonl", "rewards": [{"exactMatch": {}}, {"python": {"path": "rewards.py", "function": "score"}}]}}})
    with pytest.raises(BadRewardFunction, match=r"eval.generate.rewards\[1\].python.path: .* defines no function 'score'"):
        check_pipeline([stage], str(tmp_path), {})
    (tmp_path / "rewards.py").write_text("def score(prompts, completions, references, **kw):\n    return [1.0]\n")
    assert any("eval.generate.rewards[1].python.path" in line for line in check_pipeline([stage], str(tmp_path), {}))
