"""The exported model's card: every stage in order with its data (checksummed), hyperparameters
and final metrics, the eval table, the image and the version — read from what the stages wrote."""

from __future__ import annotations

import hashlib
import json

from refinery.api.v1alpha1 import TrainingPipeline
from refinery_trainer.export.card import Lineage, ancestry, model_card
from tests.builders import chat_pipeline

METRICS = {"pretrain": {"evalLoss": 0.85}, "sft": {"evalLoss": 0.35}, "reward": {"evalAccuracy": 0.99},
           "rlhf": {"meanReward": 4.41, "kl": 0.27}, "eval": {"sft.exactMatch": 0.64, "rlhf.exactMatch": 1.0}}


def test_the_card_lists_every_stage_metric_and_data_revision(tmp_path):
    manifest = chat_pipeline("tiny").manifest()
    manifest["spec"]["stages"].append({"name": "eval", "type": "eval", "eval": {
        "models": ["sft", "rlhf"], "generate": {"path": "data/answers.jsonl"}}})
    spec = TrainingPipeline.model_validate(manifest).spec
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sft.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    outputs = {}
    for name, metrics in METRICS.items():
        folder = tmp_path / "p" / name
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps({"metrics": metrics, "steps": 10}))
        outputs[name] = str(folder / ("eval.json" if name == "eval" else "model"))

    card = model_card(Lineage.from_run("tiny", spec, outputs, tmp_path), "rlhf", "0.1.0")
    rows = [line for line in card.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split("|")[2].strip(" `") for row in rows] == ["pretrain", "sft", "reward", "rlhf", "eval"]
    assert "`pretrain` → `sft` → `reward` → `rlhf`" in card  # its lineage; eval is not part of it
    assert "evalLoss=0.85" in card and "evalAccuracy=0.99" in card and "meanReward=4.41" in card
    assert "| `sft` | 0.64 |" in card and "| `rlhf` | 1 |" in card  # the eval table
    digest = hashlib.sha256((tmp_path / "data" / "sft.jsonl").read_bytes()).hexdigest()
    assert f"`data/sft.jsonl` (sha256 `{digest}`)" in card
    assert "`data/pretrain.txt` (not readable at export)" in card  # said so, not hidden
    assert "Refinery 0.1.0" in card and spec.image in card
    assert "learningRate=" in card and "maxSteps=" not in card.split("### `eval`")[1]


def test_ancestry_follows_from_and_reward_model():
    spec = chat_pipeline().obj().spec
    assert ancestry(spec.stages, "rlhf") == ["pretrain", "sft", "reward", "rlhf"]
    assert ancestry(spec.stages, "sft") == ["pretrain", "sft"]
