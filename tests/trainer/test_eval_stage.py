"""eval on the example task: the scores are right by ground truth (the task's own checker), the
sft model beats the pretrained one it started from, and lm-evaluation-harness runs an offline
custom task (tests/trainer/harness_tasks) with its metrics reported like any stage's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from refinery.api.run import ProgressRecord

from .conftest import read_json, stage_run, write_config
from .example_task import DATA, example_data, example_models, model_dir

pytestmark = pytest.mark.slow
TASKS = Path(__file__).parent / "harness_tasks"


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    return example_models(tmp_path_factory.getbasetemp() / "example")


def eval_run(ws: Path, example: Path, spec: dict, models: list[str]) -> dict:
    run = stage_run(ws, "eval", "eval", data={"path": "unused"}, models={m: str(model_dir(example, m)) for m in models})
    del run["stage"]["data"], run["stage"]["training"]
    run["stage"]["eval"] = spec
    return run


def run_eval(ws: Path, run: dict) -> dict:
    from refinery_trainer import cli

    assert cli.main(["run", "--config", str(write_config(ws / "eval.yaml", run))]) == 0
    return read_json(ws / "p" / "eval" / "result.json")


def test_generative_scores_match_the_tasks_own_checker(example, workspace):
    spec = {"models": ["pretrain", "sft"], "generate": {"path": str(DATA / "answers_eval.jsonl"), "maxNewTokens": 4,
                                                        "rewardModel": "reward", "baseline": "pretrain"}}
    metrics = run_eval(workspace, eval_run(workspace, example, spec, ["pretrain", "sft", "reward"]))["metrics"]

    answers = [json.loads(line) for line in (workspace / "p" / "eval" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 2 * 128
    for model in ("pretrain", "sft"):
        rows = [a for a in answers if a["model"] == model]
        truth = sum(example_data.is_correct(a["prompt"], a["answer"]) for a in rows) / len(rows)
        assert metrics[f"{model}.exactMatch"] == pytest.approx(truth)  # ground truth, not our own yardstick
        assert metrics[f"{model}.meanReward"] == pytest.approx(sum(a["reward"] for a in rows) / len(rows))
    # Fine-tuning taught the task: better answers, a higher reward, and it beats its starting point.
    assert metrics["sft.exactMatch"] > metrics["pretrain.exactMatch"] + 0.3
    assert metrics["sft.meanReward"] > metrics["pretrain.meanReward"]
    assert metrics["sft.winRate"] > 0.5 and metrics["pretrain.winRate"] == 0.5  # the baseline ties itself
    assert json.loads((workspace / "p" / "eval" / "eval.json").read_text())["sft"]["exactMatch"] == metrics["sft.exactMatch"]


def test_pass_at_k_over_sampled_answers_matches_the_tasks_own_checker(example, workspace):
    """k = 4 answers per prompt at temperature 1: pass@k counts prompts with a right answer among
    the 4 (by the task's own checker), mean@k the share of right answers; verifiers and a reward
    model of eval.generate.rewards are each reported under their name."""
    k, prompts = 4, 32
    rewards = [{"exactMatch": {}}, {"regex": {"pattern": r"^ [a-z]+$"}, "name": "oneWord"}, {"model": "reward", "name": "rm"}]
    spec = {"models": ["sft"], "generate": {"path": str(DATA / "answers_eval.jsonl"), "maxNewTokens": 4, "limit": prompts,
                                            "temperature": 1.0, "samples": k, "rewardModel": "reward", "rewards": rewards}}
    metrics = run_eval(workspace, eval_run(workspace, example, spec, ["sft", "reward"]))["metrics"]

    answers = [json.loads(line) for line in (workspace / "p" / "eval" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == prompts * k and [a["sample"] for a in answers[:k]] == list(range(k))
    right = [example_data.is_correct(a["prompt"], a["answer"]) for a in answers]
    per_prompt = [right[i:i + k] for i in range(0, len(right), k)]
    assert all(len({answers[i + j]["prompt"] for j in range(k)}) == 1 for i in range(0, len(answers), k))
    assert metrics["sft.passAtK"] == pytest.approx(sum(any(p) for p in per_prompt) / prompts)
    assert metrics["sft.meanAtK"] == pytest.approx(sum(right) / len(right)) == pytest.approx(metrics["sft.exactMatch"])
    # The sft model knows some animals and guesses at others: sampling 4 times finds more right answers.
    assert metrics["sft.passAtK"] > metrics["sft.meanAtK"] > 0
    assert metrics["sft.oneWord"] == pytest.approx(sum(a["rewards"]["oneWord"] for a in answers) / len(answers))
    assert metrics["sft.rm"] == pytest.approx(metrics["sft.meanReward"])  # the same reward model, two ways


def test_one_greedy_sample_gives_pass_at_1_equal_to_exact_match(example, workspace):
    spec = {"models": ["sft"], "generate": {"path": str(DATA / "answers_eval.jsonl"), "maxNewTokens": 4, "limit": 64,
                                            "samples": 1}}
    metrics = run_eval(workspace, eval_run(workspace, example, spec, ["sft"]))["metrics"]
    assert metrics["sft.passAtK"] == metrics["sft.meanAtK"] == metrics["sft.exactMatch"] > 0


def test_lm_evaluation_harness_runs_an_offline_custom_task(example, workspace, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    spec = {"models": ["pretrain", "sft"], "harness": {"tasks": ["animal_sounds"], "taskDir": str(TASKS), "batchSize": 16}}
    metrics = run_eval(workspace, eval_run(workspace, example, spec, ["pretrain", "sft"]))["metrics"]
    assert set(metrics) == {"pretrain.animal_sounds/acc", "sft.animal_sounds/acc"}
    # Ten choices: chance is 0.1. The sft model knows most sounds (it confuses four animals' often).
    assert metrics["sft.animal_sounds/acc"] > 0.5
    assert metrics["sft.animal_sounds/acc"] > metrics["pretrain.animal_sounds/acc"]
    # What the planner folds into status.stages[].metrics: the progress record, final.
    progress = ProgressRecord.model_validate(read_json(workspace / "p" / "eval" / "progress.json"))
    assert progress.phase == "Succeeded" and progress.metrics == metrics


def test_an_unknown_harness_task_fails_with_a_clear_message(example, workspace):
    from refinery_trainer import cli

    spec = {"models": ["sft"], "harness": {"tasks": ["no_such_task"], "taskDir": str(TASKS)}}
    config = write_config(workspace / "eval.yaml", eval_run(workspace, example, spec, ["sft"]))
    assert cli.main(["run", "--config", str(config)]) == 1
    progress = read_json(workspace / "p" / "eval" / "progress.json")
    assert progress["failureReason"] == "HarnessFailed" and "no_such_task" in progress["message"]


def test_harness_metrics_reach_the_pipeline_status_in_local_mode(example, tmp_path):
    """The same offline task as the eval stage of a pipeline run with `refinery run`: status.json has them."""
    import subprocess
    import sys

    import yaml

    manifest = {
        "apiVersion": "refinery.dev/v1alpha1", "kind": "TrainingPipeline", "metadata": {"name": "harnessed"},
        "spec": {"storage": {"claim": {"size": "1Gi"}}, "stages": [
            # Two more steps of language modelling from the example's sft model (a stage that starts from a path).
            {"name": "tuned", "type": "pretrain", "model": {"path": str(model_dir(example, "sft"))},
             "data": {"path": str(DATA / "pretrain.txt")},
             "training": {"maxSteps": 2, "batchSize": 8, "seqLen": 64, "saveSteps": 2, "learningRate": 1e-5}},
            {"name": "eval", "type": "eval",
             "eval": {"models": ["tuned"], "harness": {"tasks": ["animal_sounds"], "taskDir": str(TASKS)}},
             "gate": {"metric": "tuned.animal_sounds/acc", "operator": ">", "value": 0.1}},
        ]},
    }
    path = tmp_path / "harnessed.yaml"
    path.write_text(yaml.safe_dump(manifest))
    proc = subprocess.run([sys.executable, "-m", "refinery_operator.cli", "run", str(path), "--workdir",
                           str(tmp_path / "runs"), "--quiet", "--metrics-port", "0"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    status = json.loads((tmp_path / "runs" / "harnessed" / "status.json").read_text())
    evaluated = next(s for s in status["stages"] if s["name"] == "eval")
    assert evaluated["metrics"]["tuned.animal_sounds/acc"] > 0.5  # chance: 0.1
    assert "animal_sounds/acc" in proc.stdout  # the summary's eval table
