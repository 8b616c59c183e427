"""reward on the example task: the reward model learns to prefer the right answer on held-out pairs."""

from __future__ import annotations

import pytest

from refinery.api.run import CHECKPOINT_MARKER, ProgressRecord

from .conftest import read_json
from .example_task import DATA, example_models, example_run, model_dir, run_stage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    return example_models(tmp_path_factory.getbasetemp() / "example")


def test_reward_model_ranks_held_out_pairs(example):
    result = read_json(example / "p" / "reward" / "result.json")
    metrics = result["metrics"]
    assert metrics["evalAccuracy"] >= 0.8
    assert metrics["evalAccuracy"] > metrics["initialEvalAccuracy"] + 0.2
    assert metrics["evalLoss"] < metrics["initialEvalLoss"]
    assert result["steps"] == 250 and result["output"] == str(model_dir(example, "reward"))

    progress = ProgressRecord.model_validate(read_json(example / "p" / "reward" / "progress.json"))
    assert progress.phase == "Succeeded" and progress.metrics["evalAccuracy"] == metrics["evalAccuracy"]
    assert (example / "p" / "reward" / "attempt-1" / "checkpoints" / "checkpoint-250" / CHECKPOINT_MARKER).is_file()


def test_saved_reward_model_scores_right_answers_higher(example):
    """The saved model/ loads as a one-output classifier and, scored the way RL scores, prefers the truth."""
    from transformers import AutoModelForSequenceClassification

    from refinery_trainer.scoring import score
    from refinery_trainer.tokenizer import load_tokenizer

    path = model_dir(example, "reward")
    model = AutoModelForSequenceClassification.from_pretrained(path)
    tokenizer = load_tokenizer(path)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    prompts = ["What does the sleepy cow say?", "What sound does a little bee make?"]
    right = score(model, tokenizer, prompts, [" moo", " buzz"])
    wrong = score(model, tokenizer, prompts, [" baa", " meow"])  # the SFT annotator's confusions
    silent = score(model, tokenizer, prompts, ["", ""])
    assert all(r > w and r > s for r, w, s in zip(right, wrong, silent))


def test_reward_resumes_from_its_checkpoint(example, workspace):
    first = example_run(workspace, "rm", "reward", from_="sft", initModel=str(model_dir(example, "sft")),
                        training={"maxSteps": 6, "saveSteps": 3})
    assert run_stage(workspace, first)["steps"] == 6
    second = example_run(workspace, "rm", "reward", from_="sft", initModel=str(model_dir(example, "sft")),
                         training={"maxSteps": 9, "saveSteps": 3}, attempt=2)
    assert run_stage(workspace, second)["steps"] == 9
    assert read_json(workspace / "p" / "rm" / "progress.json")["resumedFrom"]["step"] == 6
    assert (workspace / "p" / "rm" / "attempt-2" / "checkpoints" / "checkpoint-9" / CHECKPOINT_MARKER).is_file()


def test_reward_without_prompt_column_scores_whole_texts(example, workspace):
    """Preference files may hold whole texts in chosen/rejected (TRL's implicit-prompt format)."""
    from .conftest import write_jsonl
    import json

    rows = [json.loads(line) for line in (DATA / "preferences.jsonl").read_text().splitlines()[:64]]
    write_jsonl(workspace / "pairs.jsonl", [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]}
                                            for r in rows])
    run = example_run(workspace, "rm", "reward", from_="sft", initModel=str(model_dir(example, "sft")),
                      training={"maxSteps": 4, "saveSteps": 4})
    run["stage"]["data"] = {"path": str(workspace / "pairs.jsonl"), "evalFraction": 0.25}
    result = run_stage(workspace, run)
    assert result["steps"] == 4
    # Both accuracies count each of the 16 held-out pairs (64 rows x evalFraction 0.25) once.
    for key in ("initialEvalAccuracy", "evalAccuracy"):
        assert (result["metrics"][key] * 16) % 1 == 0, (key, result["metrics"][key])
