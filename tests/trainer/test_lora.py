"""LoRA: sft → reward on tiny models with adapters, saved merged (loads without peft) or as an adapter."""

from __future__ import annotations

import json
import random

import pytest

from refinery_trainer import cli

from .conftest import FAVOURITE, NAMES, THINGS, read_json, sft_rows, stage_run, write_config, write_jsonl

pytestmark = pytest.mark.slow

LORA_TRAINING = {"maxSteps": 40, "learningRate": 5e-3, "saveSteps": 20}


@pytest.fixture(autouse=True)
def _own_termination_log(tmp_path, monkeypatch):
    """Stages here must not overwrite the session's termination log, which other tests read."""
    monkeypatch.setenv("REFINERY_TERMINATION_LOG", str(tmp_path / "termination-log"))


def preference_rows(n: int = 160, seed: int = 1) -> list[dict]:
    """The sft lookup task as pairs: the right favourite thing over a wrong one."""
    r = random.Random(seed)
    rows = []
    for _ in range(n):
        name = r.choice(NAMES)
        wrong = r.choice([t for t in THINGS if t != FAVOURITE[name]])
        rows.append({"prompt": f"what does {name} like?\n", "chosen": f"{name} likes {FAVOURITE[name]}.",
                     "rejected": f"{name} likes {wrong}."})
    return rows


def run_stage(ws, name: str, type: str, data_file: str, init, lora: dict, training: dict | None = None) -> dict:
    run = stage_run(ws, name, type, data={"path": data_file, "evalFraction": 0.25}, from_="pretrain", initModel=str(init),
                    training={**LORA_TRAINING, "lora": lora, **(training or {})})
    assert cli.main(["run", "--config", str(write_config(ws / f"{name}.yaml", run))]) == 0
    return read_json(ws / "p" / name / "result.json")


def plain_weight_keys(folder) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return list(f.keys())


def test_lora_sft_then_reward_merged_models_load_without_peft(pretrained, workspace):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    write_jsonl(workspace / "data" / "sft.jsonl", sft_rows())
    write_jsonl(workspace / "data" / "pairs.jsonl", preference_rows(240))
    sft = run_stage(workspace, "sft", "sft", "data/sft.jsonl", pretrained / "model", {"r": 8, "alpha": 16})
    assert sft["metrics"]["evalLoss"] < sft["metrics"]["initialEvalLoss"] - 0.5

    # Checkpoints hold only the adapter: the base weights were frozen.
    checkpoint = workspace / "p" / "sft" / "attempt-1" / "checkpoints" / "checkpoint-40"
    assert (checkpoint / "adapter_model.safetensors").is_file() and not (checkpoint / "model.safetensors").exists()

    model_dir = workspace / "p" / "sft" / "model"
    assert not list(model_dir.glob("adapter_*")) and (model_dir / "config.json").is_file()
    keys = plain_weight_keys(model_dir)
    assert "model.layers.0.self_attn.q_proj.weight" in keys
    assert not [k for k in keys if "lora_" in k or "base_model" in k or "base_layer" in k]
    merged = AutoModelForCausalLM.from_pretrained(model_dir)  # plain transformers, no peft involved
    base = AutoModelForCausalLM.from_pretrained(pretrained / "model")
    assert not _same(merged, base, "model.layers.0.mlp.down_proj.weight")  # adapted and folded in
    assert _same(merged, base, "model.embed_tokens.weight") and _same(merged, base, "lm_head.weight")  # not adapted

    reward = run_stage(workspace, "rm", "reward", "data/pairs.jsonl", model_dir, {"r": 16, "alpha": 32},
                       training={"learningRate": 3e-3, "maxSteps": 120, "saveSteps": 120})
    metrics = reward["metrics"]
    assert metrics["evalAccuracy"] >= 0.8 and metrics["evalAccuracy"] >= metrics["initialEvalAccuracy"] + 0.2
    assert metrics["evalLoss"] < metrics["initialEvalLoss"] - 0.2
    rm_dir = workspace / "p" / "rm" / "model"
    assert not [k for k in plain_weight_keys(rm_dir) if "lora_" in k or "modules_to_save" in k]
    rm = AutoModelForSequenceClassification.from_pretrained(rm_dir)
    assert rm.config.num_labels == 1 and rm.score.weight.abs().sum() > 0


def test_lora_adapter_output_loads_through_load_model_and_feeds_the_next_stage(pretrained, workspace):
    import torch
    from transformers import AutoModelForCausalLM

    from refinery_trainer.modeling import load_model

    write_jsonl(workspace / "data" / "sft.jsonl", sft_rows())
    sft = run_stage(workspace, "sft", "sft", "data/sft.jsonl", pretrained / "model",
                    {"r": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"], "save": "adapter"})
    assert sft["metrics"]["evalLoss"] < sft["metrics"]["initialEvalLoss"]

    model_dir = workspace / "p" / "sft" / "model"
    config = json.loads((model_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(pretrained / "model")
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"] and config["r"] == 4
    assert not (model_dir / "config.json").exists() and (model_dir / "tokenizer.json").is_file()

    merged = load_model(model_dir)  # base + adapter, merged: a plain model again
    base = AutoModelForCausalLM.from_pretrained(pretrained / "model")
    assert type(merged) is type(base)
    assert not _same(merged, base, "model.layers.0.self_attn.q_proj.weight")
    assert _same(merged, base, "model.layers.0.self_attn.k_proj.weight")

    # The next stage starts from the adapter folder like from any model.
    write_jsonl(workspace / "data" / "pairs.jsonl", preference_rows())
    reward = run_stage(workspace, "rm", "reward", "data/pairs.jsonl", model_dir, {"save": "adapter"},
                       training={"maxSteps": 4, "saveSteps": 4})
    rm_config = json.loads((workspace / "p" / "rm" / "model" / "adapter_config.json").read_text())
    assert rm_config["base_model_name_or_path"] == str(model_dir) and "score" in rm_config["modules_to_save"]

    from transformers import AutoModelForSequenceClassification

    from safetensors import safe_open

    rm = load_model(workspace / "p" / "rm" / "model", AutoModelForSequenceClassification, num_labels=1)
    assert reward["steps"] == 4 and rm.config.num_labels == 1
    with safe_open(str(workspace / "p" / "rm" / "model" / "adapter_model.safetensors"), "pt") as f:
        trained_head = f.get_tensor("base_model.model.score.weight")  # the head trained in full (modules_to_save)
    assert torch.equal(rm.score.weight, trained_head)


def _same(a, b, name: str) -> bool:
    import torch

    return torch.equal(a.get_parameter(name), b.get_parameter(name))
