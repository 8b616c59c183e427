"""The example task (examples/data, "what does the animal say?") as a test fixture.

    ws = example_models(tmp_path_factory.getbasetemp() / "example")   # pretrain, sft, reward once
    run = example_run(ws, "rlhf", "rlhf", "prompts", from_="sft", rewardModel=...)
    accuracy(ws / "p" / "sft" / "model")                                # checked by is_correct

The product never depends on the task: only these tests and `scripts/make_example_data.py` know it.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

from refinery_trainer import cli

from .conftest import read_json, stage_run, write_config

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "data"

_spec = importlib.util.spec_from_file_location("make_example_data", ROOT / "scripts" / "make_example_data.py")
example_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example_data)

MODEL = {
    "config": {"hiddenSize": 64, "numHiddenLayers": 2, "numAttentionHeads": 4, "intermediateSize": 256,
               "maxPositionEmbeddings": 128},
    "vocabSize": 512,
}
# Steps are what the tiny model needs on this task (measured on 2 CPU cores): sft must train long
# enough to bind each animal to a sound (it happens around step 150), reward to tell every sound apart.
TRAINING = {
    "pretrain": {"maxSteps": 120, "learningRate": 3e-3, "batchSize": 16, "seqLen": 128, "saveSteps": 120},
    "sft": {"maxSteps": 400, "learningRate": 3e-3, "batchSize": 32, "seqLen": 64, "saveSteps": 400},
    "reward": {"maxSteps": 250, "learningRate": 3e-3, "batchSize": 32, "seqLen": 64, "saveSteps": 250},
    "rlhf": {"maxSteps": 100, "learningRate": 1e-3, "batchSize": 32, "seqLen": 64, "saveSteps": 100},
    "dpo": {"maxSteps": 40, "learningRate": 1e-3, "batchSize": 16, "seqLen": 64, "saveSteps": 40},
}
FILES = {"pretrain": ("pretrain.txt", None), "sft": ("sft.jsonl", "sft_eval.jsonl"),
         "reward": ("preferences.jsonl", "preferences_eval.jsonl"), "rlhf": ("prompts.jsonl", "prompts_eval.jsonl"),
         "dpo": ("preferences.jsonl", "preferences_eval.jsonl")}


def example_run(ws: Path, name: str, type: str, *, training: dict | None = None, stage: dict | None = None,
                **fields) -> dict:
    """A StageRun of `type` on the example data (absolute paths), reporting to a file in `ws`.
    `stage` adds fields to the stage spec (`rl`, `rewardModel`), `fields` to the run."""
    path, eval_path = FILES[type]
    data = {"path": str(DATA / path), **({"evalPath": str(DATA / eval_path)} if eval_path else {})}
    training = {"loggingSteps": 25, **TRAINING[type], **(training or {})}
    run = stage_run(ws, name, type, data=data, training=training, **fields)
    run["stage"].update(stage or {})
    return run


def run_stage(ws: Path, run: dict) -> dict:
    """Run a StageRun in-process through the CLI; its result.json."""
    name = run["stage"]["name"]
    config = write_config(ws / f"{name}-{run['attempt']}.yaml", run)
    assert cli.main(["run", "--config", str(config)]) == 0
    return read_json(ws / "p" / name / "result.json")


@functools.cache
def example_models(ws: Path) -> Path:
    """pretrain → sft → reward on the example data, once per test session (cached by folder)."""
    example_sft(ws)
    run_stage(ws, example_run(ws, "reward", "reward", from_="sft", initModel=str(model_dir(ws, "sft"))))
    return ws


@functools.cache
def example_sft(ws: Path) -> Path:
    """pretrain → sft on the example data, once per test session (cached by folder)."""
    run_stage(ws, example_run(ws, "pretrain", "pretrain", model=MODEL))
    run_stage(ws, example_run(ws, "sft", "sft", from_="pretrain", initModel=str(model_dir(ws, "pretrain"))))
    return ws


def model_dir(ws: Path, stage: str) -> Path:
    return ws / "p" / stage / "model"


def eval_prompts() -> list[str]:
    return [json.loads(line)["prompt"] for line in (DATA / "prompts_eval.jsonl").read_text().splitlines()]


def accuracy(model_path: Path, prompts: list[str], max_new_tokens: int = 4) -> float:
    """Share of `prompts` whose greedy completion is the right sound."""
    from transformers import AutoModelForCausalLM

    from refinery_trainer.scoring import generate
    from refinery_trainer.tokenizer import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(model_path)
    completions = generate(model, load_tokenizer(model_path), prompts, max_new_tokens)
    return sum(example_data.is_correct(p, c) for p, c in zip(prompts, completions)) / len(prompts)
