"""dpo on the example task: the SFT policy learns to prefer the right sound on held-out pairs."""

from __future__ import annotations

import json

import pytest

from refinery.api.run import CHECKPOINT_MARKER, ProgressRecord

from .conftest import read_json
from .example_task import DATA, example_run, example_sft, model_dir, run_stage

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _own_termination_log(tmp_path, monkeypatch):
    """Stages here must not overwrite the session's termination log, which other tests read."""
    monkeypatch.setenv("REFINERY_TERMINATION_LOG", str(tmp_path / "termination-log"))


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    return example_sft(tmp_path_factory.getbasetemp() / "example")


def dpo_run(ws, sft_ws, name: str = "dpo", **kwargs) -> dict:
    return example_run(ws, name, "dpo", from_="sft", initModel=str(model_dir(sft_ws, "sft")), **kwargs)


def test_dpo_raises_the_held_out_margin(sft, workspace):
    result = run_stage(workspace, dpo_run(workspace, sft, stage={"dpo": {"beta": 0.1}}))
    metrics = result["metrics"]
    # The SFT demos confuse some animals; the preferences do not. DPO widens chosen-over-rejected.
    assert metrics["evalMargin"] > metrics["initialEvalMargin"] + 1.0
    assert metrics["evalAccuracy"] >= 0.8  # the implicit reward prefers chosen on most held-out pairs
    assert metrics["evalLoss"] < metrics["initialEvalLoss"] < 0.7  # sigmoid loss starts at ln 2
    assert result["steps"] == 40 and result["type"] == "dpo"

    progress = ProgressRecord.model_validate(read_json(workspace / "p" / "dpo" / "progress.json"))
    assert progress.phase == "Succeeded" and progress.metrics["evalMargin"] == metrics["evalMargin"]
    assert (workspace / "p" / "dpo" / "attempt-1" / "checkpoints" / "checkpoint-40" / CHECKPOINT_MARKER).is_file()

    # The saved model/ is the trained policy, as a plain causal LM: its held-out margin is the SFT model's and more.
    held_out = [json.loads(line) for line in (DATA / "preferences_eval.jsonl").read_text().splitlines()]
    assert mean_margin(model_dir(workspace, "dpo"), held_out) > mean_margin(model_dir(sft, "sft"), held_out) + 1.0


def mean_margin(path, rows: list[dict]) -> float:
    """Mean log pi(chosen|prompt) - log pi(rejected|prompt) of the causal LM saved at `path`."""
    from transformers import AutoModelForCausalLM

    from refinery_trainer.stages.dpo import response_logps
    from refinery_trainer.tokenizer import load_tokenizer

    policy = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = load_tokenizer(path)

    def ids(texts: list[str], eos: bool = False) -> list[list[int]]:
        return [tokenizer(t, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if eos else []) for t in texts]

    prompts = ids([r["prompt"] for r in rows])
    chosen = response_logps(policy, prompts, ids([r["chosen"] for r in rows], eos=True), tokenizer.pad_token_id)
    rejected = response_logps(policy, prompts, ids([r["rejected"] for r in rows], eos=True), tokenizer.pad_token_id)
    return sum(c - r for c, r in zip(chosen, rejected, strict=True)) / len(rows)


def test_dpo_resumes_from_its_checkpoint(sft, workspace):
    first = dpo_run(workspace, sft, training={"maxSteps": 6, "saveSteps": 3})
    assert run_stage(workspace, first)["steps"] == 6
    second = dpo_run(workspace, sft, training={"maxSteps": 9, "saveSteps": 3}, attempt=2)
    assert run_stage(workspace, second)["steps"] == 9
    assert read_json(workspace / "p" / "dpo" / "progress.json")["resumedFrom"]["step"] == 6
    assert (workspace / "p" / "dpo" / "attempt-2" / "checkpoints" / "checkpoint-9" / CHECKPOINT_MARKER).is_file()


def test_dpo_with_lora_learns_and_resumes(sft, workspace):
    """The LoRA reference is the policy with its adapters off; the adapter checkpoints resume."""
    lora = {"lora": {"r": 8, "alpha": 16}}
    first = dpo_run(workspace, sft, "dpo-lora", training={"maxSteps": 20, "saveSteps": 10, "learningRate": 3e-3, **lora})
    result = run_stage(workspace, first)
    assert result["metrics"]["evalMargin"] > result["metrics"]["initialEvalMargin"] + 0.5
    checkpoint = workspace / "p" / "dpo-lora" / "attempt-1" / "checkpoints" / "checkpoint-20"
    assert (checkpoint / "adapter_model.safetensors").is_file()

    second = dpo_run(workspace, sft, "dpo-lora", training={"maxSteps": 30, "saveSteps": 10, "learningRate": 3e-3, **lora},
                     attempt=2)
    assert run_stage(workspace, second)["steps"] == 30
    assert read_json(workspace / "p" / "dpo-lora" / "progress.json")["resumedFrom"]["step"] == 20
    assert not list(model_dir(workspace, "dpo-lora").glob("adapter_*"))  # merged by default


def test_dpo_bad_preferences_fail_as_bad_data(sft, workspace):
    rows = [json.loads(line) for line in (DATA / "preferences.jsonl").read_text().splitlines()[:8]]
    rows[5] = {"prompt": rows[5]["prompt"], "chosen": rows[5]["chosen"]}  # no rejected
    (workspace / "prefs.jsonl").parent.mkdir(parents=True, exist_ok=True)
    (workspace / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = dpo_run(workspace, sft)
    run["stage"]["data"] = {"path": str(workspace / "prefs.jsonl"), "evalFraction": 0.25}
    from refinery_trainer import cli

    from .conftest import write_config

    assert cli.main(["run", "--config", str(write_config(workspace / "bad.yaml", run))]) == 1
    progress = read_json(workspace / "p" / "dpo" / "progress.json")
    assert progress["phase"] == "Failed" and progress["failureReason"] == "BadData"
    assert f"{workspace / 'prefs.jsonl'} line 6: missing field 'rejected'" in progress["message"]


def conversational(path, out) -> str:
    """The example's text pairs in TRL's conversational format: the prompt as a user turn, each answer as
    an assistant turn."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": r["prompt"]}],
                                       "chosen": [{"role": "assistant", "content": r["chosen"].strip()}],
                                       "rejected": [{"role": "assistant", "content": r["rejected"].strip()}]}) + "\n"
                           for r in rows))
    return str(out)


def test_dpo_on_conversational_pairs_rendered_with_the_chat_template(sft, workspace):
    """chosen/rejected as messages: TRL renders them with the SFT model's chat template, and DPO still
    widens the held-out margin."""
    data = {"path": conversational(DATA / "preferences.jsonl", workspace / "data" / "pairs.jsonl"),
            "evalPath": conversational(DATA / "preferences_eval.jsonl", workspace / "data" / "pairs_eval.jsonl")}
    run = dpo_run(workspace, sft, stage={"dpo": {"beta": 0.1}})
    run["stage"]["data"] = data
    metrics = run_stage(workspace, run)["metrics"]
    assert metrics["evalMargin"] > metrics["initialEvalMargin"] + 1.0
    assert metrics["evalLoss"] < metrics["initialEvalLoss"]
