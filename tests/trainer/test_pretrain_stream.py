"""Pretraining on shards (a folder of JSONL/txt files, as a fetched s3:// prefix lands): each shard
tokenized once into the stage folder, read as memory-mapped blocks; the model learns; a resumed attempt
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
    [tokenizer_dir] = list((stage_dir / "tokenized").iterdir())  # one tokenizer: one folder of shards
    shards = sorted(tokenizer_dir.iterdir(), key=lambda p: read_json(p / MARKER)["file"])
    markers = [read_json(p / MARKER) for p in shards]
    assert [m["file"] for m in markers] == ["part-000.jsonl", "part-001.jsonl", "part-002.jsonl", "part-003.txt"]
    for shard, marker in zip(shards, markers):  # uint16: a 384-token vocabulary
        assert (shard / TOKENS).stat().st_size == marker["tokens"] * 2

    # A second attempt that trains on (resumes from checkpoint-40): the same tokens, not rewritten.
    written = [(p / TOKENS).stat().st_mtime_ns for p in shards]
    run = stage_run(workspace, "pretrain", "pretrain", data={"path": "data/shards"}, model=TINY_MODEL,
                    training={"maxSteps": 50, "saveSteps": 20}, attempt=2)
    assert cli.main(["run", "--config", str(write_config(workspace / "a2.yaml", run))]) == 0
    assert read_json(stage_dir / "progress.json")["resumedFrom"]["step"] == 40
    assert list((stage_dir / "tokenized").iterdir()) == [tokenizer_dir]
    assert [(p / TOKENS).stat().st_mtime_ns for p in shards] == written


def test_only_rank_0_tokenizes_and_the_other_ranks_wait_for_its_marker(tmp_path, monkeypatch):
    """Ranks of one attempt share the volume: one writer of the token folder, the others read its copy."""
    import threading

    from refinery_trainer.sources import corpus
    from refinery_trainer.tokenizer import train_bpe_tokenizer

    make_corpus(tmp_path / "shards" / "a.txt", docs=50)
    files = [tmp_path / "shards" / "a.txt"]
    tokenizer = train_bpe_tokenizer((tmp_path / "shards" / "a.txt").read_text().split("\n\n"), vocab_size=300)
    writers = []
    real_write = corpus._write
    monkeypatch.setattr(corpus, "_write", lambda *a: writers.append(threading.current_thread().name) or real_write(*a))
    got = {}
    waiter = threading.Thread(name="rank-1", target=lambda: got.update(
        rank1=corpus.tokenize_once(files, tokenizer, "text", tmp_path / "cache", rank=1)))
    monkeypatch.setattr(corpus, "WAIT_POLL_S", 0.01)
    waiter.start()
    waiter.join(timeout=0.3)
    assert waiter.is_alive() and not (tmp_path / "cache").exists()  # rank 1 waits and writes nothing
    [folder] = corpus.tokenize_once(files, tokenizer, "text", tmp_path / "cache", rank=0)
    waiter.join(timeout=10)
    assert got["rank1"] == [folder] and (folder / MARKER).is_file()
    assert set(writers) == {threading.current_thread().name}  # every batch written by rank 0
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no second copy, no leftovers


def test_a_rank_whose_corpus_key_rank_0_never_writes_fails_instead_of_waiting_forever(tmp_path, monkeypatch):
    import pytest

    from refinery_trainer.errors import DataError
    from refinery_trainer.sources import corpus

    monkeypatch.setattr(corpus, "WAIT_POLL_S", 0.01)
    monkeypatch.setattr(corpus, "KEY_GRACE_S", 0.05)
    with pytest.raises(DataError, match="the ranks built different tokenizers"):
        corpus.wait_for_tokens([tmp_path / "cache" / "0123abcd" / "4567ef"])
