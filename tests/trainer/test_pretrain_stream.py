"""Pretraining on shards (a folder of JSONL/txt files, as a fetched s3:// prefix lands): tokenized
once into the stage folder, read as memory-mapped blocks; the model learns; a resumed attempt
finds the tokens complete and tokenizes nothing."""

from __future__ import annotations

import json
import random

from refinery_trainer import cli
from refinery_trainer.sources.corpus import MARKER, TOKENS

from .conftest import NAMES, THINGS, TINY_MODEL, VERBS, make_corpus, read_json, stage_run, write_config


def make_shards(folder, shards: int = 4, docs: int = 120) -> None:
    folder.mkdir(parents=True)
    for i in range(shards - 1):
        r = random.Random(i)
        with open(folder / f"part-{i:03d}.jsonl", "w") as f:
            for _ in range(docs):
                text = " ".join(f"{r.choice(NAMES)} {r.choice(VERBS)} {r.choice(THINGS)}." for _ in range(r.randint(2, 5)))
                f.write(json.dumps({"text": text}) + "\n")
    make_corpus(folder / f"part-{shards - 1:03d}.txt", docs=docs, seed=99)  # formats may mix


def test_sharded_corpus_is_tokenized_once_and_learned(workspace):
    make_shards(workspace / "data" / "shards")
    run = stage_run(workspace, "pretrain", "pretrain", data={"path": "data/shards"}, model=TINY_MODEL,
                    training={"maxSteps": 40, "saveSteps": 20})
    assert cli.main(["run", "--config", str(write_config(workspace / "a1.yaml", run))]) == 0
    stage_dir = workspace / "p" / "pretrain"
    result = read_json(stage_dir / "result.json")
    assert result["metrics"]["evalLoss"] < result["metrics"]["initialEvalLoss"] - 1.0
    [tokens] = [p for p in (stage_dir / "tokenized").iterdir() if (p / MARKER).is_file()]
    marker = read_json(tokens / MARKER)
    assert marker["files"] == ["part-000.jsonl", "part-001.jsonl", "part-002.jsonl", "part-003.txt"]
    assert (tokens / TOKENS).stat().st_size == marker["tokens"] * 2  # uint16: a 384-token vocabulary

    # A second attempt that trains on (resumes from checkpoint-40): the same tokens, not rewritten.
    written = (tokens / TOKENS).stat().st_mtime_ns
    run = stage_run(workspace, "pretrain", "pretrain", data={"path": "data/shards"}, model=TINY_MODEL,
                    training={"maxSteps": 50, "saveSteps": 20}, attempt=2)
    assert cli.main(["run", "--config", str(write_config(workspace / "a2.yaml", run))]) == 0
    assert read_json(stage_dir / "progress.json")["resumedFrom"]["step"] == 40
    assert [p.name for p in (stage_dir / "tokenized").iterdir()] == [tokens.name]
    assert (tokens / TOKENS).stat().st_mtime_ns == written
