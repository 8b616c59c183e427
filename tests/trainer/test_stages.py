"""pretrain and sft end to end on tiny models: they run, save what the next stage needs, and learn."""

from __future__ import annotations

import json
import shutil

import pytest

from refinery.api.run import CHECKPOINT_MARKER, ProgressRecord
from refinery_trainer import cli

from .conftest import make_corpus, read_json, sft_rows, stage_run, write_config, write_jsonl, TINY_MODEL

pytestmark = pytest.mark.slow


def test_pretrain_learns_and_saves_a_loadable_model(pretrained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = read_json(pretrained / "result.json")
    assert result["stage"] == "pretrain" and result["type"] == "pretrain" and result["attempt"] == 1
    assert result["steps"] == 60
    assert result["output"] == str(pretrained / "model")
    metrics = result["metrics"]
    assert {"evalLoss", "initialEvalLoss", "trainLoss"} <= set(metrics)
    assert metrics["evalLoss"] < metrics["initialEvalLoss"] - 1.0  # it learnt the grammar, not just noise

    model = AutoModelForCausalLM.from_pretrained(pretrained / "model")
    tokenizer = AutoTokenizer.from_pretrained(pretrained / "model")
    assert model.config.vocab_size == len(tokenizer) <= TINY_MODEL["vocabSize"]
    assert tokenizer.decode(tokenizer("alice likes the cat.")["input_ids"]) == "alice likes the cat."
    assert tokenizer.chat_template

    checkpoints = sorted((pretrained / "attempt-1" / "checkpoints").glob("checkpoint-*"))
    assert [c.name for c in checkpoints] == ["checkpoint-20", "checkpoint-40", "checkpoint-60"]
    for path in checkpoints:
        marker = json.loads((path / CHECKPOINT_MARKER).read_text())
        assert marker["step"] == int(path.name.split("-")[1]) and marker["time"]

    progress = ProgressRecord.model_validate(read_json(pretrained / "progress.json"))
    assert progress.phase == "Succeeded" and progress.progress == 1.0 and progress.step == 60
    assert progress.checkpoints == 3 and progress.last_checkpoint.step == 60
    assert progress.metrics["evalLoss"] == metrics["evalLoss"]
    assert progress.output == result["output"] and progress.resumed_from is None
    assert json.loads((pretrained / "termination-message.json").read_text())["stage"] == "pretrain"


@pytest.mark.parametrize("chat", [False, True], ids=["prompt-completion", "messages"])
def test_sft_from_pretrained_model_learns_the_task(pretrained, workspace, chat):
    write_jsonl(workspace / "data" / "sft.jsonl", sft_rows(chat=chat))
    run = stage_run(workspace, "sft", "sft", data={"path": "data/sft.jsonl"}, from_="pretrain",
                    initModel=str(pretrained / "model"), training={"maxSteps": 40, "learningRate": 2e-3})
    assert cli.main(["run", "--config", str(write_config(workspace / "sft.yaml", run))]) == 0

    result = read_json(workspace / "p" / "sft" / "result.json")
    assert result["steps"] == 40
    assert result["metrics"]["evalLoss"] < result["metrics"]["initialEvalLoss"]
    assert (workspace / "p" / "sft" / "model" / "tokenizer.json").is_file()


def test_resume_falls_back_when_the_newest_checkpoint_does_not_load(workspace):
    """Two attempts in one process: the newest marked checkpoint has corrupt weights, so the
    second attempt resumes from the one before it."""
    make_corpus(workspace / "data" / "corpus.txt", docs=60)
    base = dict(data={"path": "data/corpus.txt"}, model=TINY_MODEL)
    first = stage_run(workspace, "pre", "pretrain", **base, training={"maxSteps": 15, "saveSteps": 5})
    assert cli.main(["run", "--config", str(write_config(workspace / "a1.yaml", first))]) == 0
    stage_dir = workspace / "p" / "pre"
    newest = stage_dir / "attempt-1" / "checkpoints" / "checkpoint-15"
    (newest / "model.safetensors").write_bytes(b"\0" * 64)  # marked complete, but unloadable
    shutil.rmtree(stage_dir / "model")

    second = stage_run(workspace, "pre", "pretrain", **base, attempt=2, training={"maxSteps": 20, "saveSteps": 5})
    assert cli.main(["run", "--config", str(write_config(workspace / "a2.yaml", second))]) == 0
    progress = read_json(stage_dir / "progress.json")
    assert progress["resumedFrom"]["step"] == 10
    assert read_json(stage_dir / "result.json")["steps"] == 20
    assert (stage_dir / "attempt-2" / "checkpoints" / "checkpoint-20" / CHECKPOINT_MARKER).is_file()


def test_rerun_after_the_last_checkpoint_only_finishes_the_stage(workspace):
    """Killed between the final checkpoint and result.json: the next attempt trains no more steps."""
    make_corpus(workspace / "data" / "corpus.txt", docs=60)
    base = dict(data={"path": "data/corpus.txt"}, model=TINY_MODEL, training={"maxSteps": 10, "saveSteps": 5})
    assert cli.main(["run", "--config", str(write_config(workspace / "a1.yaml", stage_run(workspace, "pre", "pretrain", **base)))]) == 0
    stage_dir = workspace / "p" / "pre"
    first = read_json(stage_dir / "result.json")
    (stage_dir / "result.json").unlink()

    again = stage_run(workspace, "pre", "pretrain", attempt=2, **base)
    assert cli.main(["run", "--config", str(write_config(workspace / "a2.yaml", again))]) == 0
    result = read_json(stage_dir / "result.json")
    assert result["steps"] == 10 and result["attempt"] == 2
    assert result["metrics"]["evalLoss"] == pytest.approx(first["metrics"]["evalLoss"], rel=1e-4)
    assert read_json(stage_dir / "progress.json")["resumedFrom"]["step"] == 10
    assert not (stage_dir / "attempt-2" / "checkpoints").exists() or not any((stage_dir / "attempt-2" / "checkpoints").iterdir())
    assert sorted(p.name for p in stage_dir.iterdir() if p.name.startswith(".")) == []
