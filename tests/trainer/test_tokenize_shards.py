"""Shard-wise tokenization (sources/corpus.py, sources/tokenize.py): N workers, each its slice of
the shards, produce exactly the tokens one process would; a worker killed mid-shard leaves
nothing the next attempt trusts; a resumed step skips the shards already complete; the stage
then tokenizes nothing."""

from __future__ import annotations

import json
import random

import pytest

from refinery_trainer.sources import corpus
from refinery_trainer.sources.corpus import MARKER, PackedBlocks

from .conftest import NAMES, THINGS, VERBS, make_corpus, read_json, stage_run, write_config


def make_shards(folder, jsonl: int = 5, docs: int = 40):
    """Shards of uneven sizes, in a subfolder too, plus an empty one (no documents)."""
    (folder / "more").mkdir(parents=True)
    for i in range(jsonl):
        r = random.Random(i)
        with open(folder / ("more" if i % 2 else ".") / f"part-{i:03d}.jsonl", "w") as f:
            for _ in range(docs * (i + 1)):
                text = " ".join(f"{r.choice(NAMES)} {r.choice(VERBS)} {r.choice(THINGS)}." for _ in range(r.randint(1, 6)))
                f.write(json.dumps({"text": text}) + "\n")
    make_corpus(folder / "part-100.txt", docs=docs, seed=99)
    (folder / "part-101.jsonl").write_text("")
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def tokenizer():
    from refinery_trainer.tokenizer import train_bpe_tokenizer

    r = random.Random(7)
    return train_bpe_tokenizer([f"{r.choice(NAMES)} {r.choice(VERBS)} {r.choice(THINGS)}." for _ in range(400)],
                               vocab_size=300)


def single_process_tokens(files, tokenizer) -> list[int]:
    """The reference: every document, in order, as BOS ids EOS (the in-memory pretrain path)."""
    from refinery_trainer.stages.pretrain import tokenize_documents

    return [t for doc in tokenize_documents(tokenizer, list(corpus.documents(files, "text"))) for t in doc]


def test_workers_slices_are_disjoint_cover_every_shard_and_balance_bytes(tmp_path):
    files = make_shards(tmp_path / "c")
    slices = [corpus.slice_of(files, i, 3) for i in range(3)]
    assert sorted(i for s in slices for i in s) == list(range(len(files)))
    loads = [sum(files[i].stat().st_size for i in s) for s in slices]
    assert max(loads) - min(loads) <= max(f.stat().st_size for f in files)  # no worker gets all the big ones
    with pytest.raises(ValueError, match="not in"):
        corpus.slice_of(files, 3, 3)


@pytest.mark.parametrize("workers", [1, 3])
def test_tokens_of_n_workers_are_token_for_token_those_of_one_process(tmp_path, tokenizer, workers):
    files = make_shards(tmp_path / "c")
    for i in range(workers):
        corpus.tokenize_slice(files, tokenizer, "text", tmp_path / "cache", i, workers)
    folders = corpus.tokenize_once(files, tokenizer, "text", tmp_path / "cache")  # all complete: a no-op
    reference = single_process_tokens(files, tokenizer)
    blocks = PackedBlocks(folders, 64)
    assert blocks.tokens(0, len(reference)).tolist() == reference
    assert len(blocks) == len(reference) // 64
    for i in range(len(blocks)):  # blocks that span two shards (and the empty one) included
        assert blocks[i]["input_ids"].tolist() == reference[i * 64:(i + 1) * 64]
    held_out = PackedBlocks(folders, 64, start=len(blocks) - 2)
    assert held_out[1]["labels"].tolist() == reference[(len(blocks) - 1) * 64:len(blocks) * 64]


def test_a_resumed_step_skips_complete_shards_and_redoes_a_killed_one(tmp_path, tokenizer, monkeypatch):
    files = make_shards(tmp_path / "c")
    cache = tmp_path / "cache"
    first = corpus.tokenize_slice(files, tokenizer, "text", cache, 0, 2)  # worker 0 finished, worker 1 did not
    folders = corpus.shard_folders(files, tokenizer, "text", cache)
    done = [f for f in folders if corpus.is_complete(f)]
    assert len(done) == first["shards"] == first["tokenized"] > 0
    written = {f: (f / corpus.TOKENS).stat().st_mtime_ns for f in done}

    # Worker 1 was killed in its first shard, after the rename and before the marker.
    killed = folders[corpus.slice_of(files, 1, 2)[0]]
    killed.mkdir(parents=True)
    (killed / corpus.TOKENS).write_bytes(b"\x01\x00" * 7)
    tokenized = []
    real = corpus.tokenize_shard
    monkeypatch.setattr(corpus, "tokenize_shard", lambda path, *a: tokenized.append(path) or real(path, *a))
    again = corpus.tokenize_slice(files, tokenizer, "text", cache, 0, 1)  # the retry: one worker, every shard
    assert again["skipped"] == len(done) and again["tokenized"] == len(files) - len(done)
    assert set(tokenized) == {files[i] for i in corpus.slice_of(files, 1, 2)}
    assert {f: (f / corpus.TOKENS).stat().st_mtime_ns for f in done} == written  # complete shards untouched
    assert PackedBlocks(folders, 64).tokens(0, 10**9).tolist() == single_process_tokens(files, tokenizer)
    assert not list(cache.rglob(".*tmp-*"))  # no temporary folder left behind


def test_the_tokenize_step_leaves_nothing_for_the_stage_to_tokenize(workspace, monkeypatch, capsys):
    """`refinery-train tokenize` (two workers, as two pods of the Indexed Job would) on the stage's
    own config: the stage then finds every shard, training and held-out, complete."""
    from refinery.api.run import StageRun
    from refinery_trainer import cli
    from refinery_trainer.context import StageContext
    from refinery_trainer.stages import pretrain_stream

    make_shards(workspace / "data" / "shards")
    make_corpus(workspace / "data" / "held-out.txt", docs=30, seed=5)
    run = stage_run(workspace, "pretrain", "pretrain", data={"path": "data/shards", "evalPath": "data/held-out.txt"},
                    model={"config": {"hiddenSize": 32}, "vocabSize": 300})
    config = write_config(workspace / "stage.yaml", run)
    lines = []
    for index in (0, 1):
        assert cli.main(["tokenize", "--config", str(config), "--index", str(index), "--of", "2"]) == 0
        lines.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert sum(line["tokenized"] for line in lines) == 7 + 1 and all(line["skipped"] == 0 for line in lines)

    monkeypatch.setattr(corpus, "tokenize_shard", lambda *a: pytest.fail("the stage tokenized a shard again"))
    ctx = StageContext(StageRun.model_validate(run))
    tokenizer = pretrain_stream.corpus_tokenizer(ctx, pretrain_stream.corpora(ctx)[0])
    for files in pretrain_stream.corpora(ctx):
        folders = corpus.tokenize_once(files, tokenizer, "text", pretrain_stream.tokens_dir(ctx))
        assert all(read_json(f / MARKER)["tokens"] >= 0 for f in folders)


def test_bad_worker_arguments_are_refused(workspace):
    from refinery_trainer import cli

    config = write_config(workspace / "stage.yaml", stage_run(workspace, "pretrain", "pretrain", data={"path": "x"}))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["tokenize", "--config", str(config), "--index", "2", "--of", "2"])
    assert exit_.value.code == 2


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_the_fast_encoder_gives_the_ids_the_transformers_tokenizer_gives(family):
    """corpus._encode skips transformers' call for the Rust tokenizer's `encode_batch_fast`: the
    same ids on byte-level and sentencepiece-style families, special-token text and BOS-adding
    post-processors included."""
    from tests.families import FAMILIES, build_tokenizer

    tokenizer = build_tokenizer(FAMILIES[family])
    texts = ["alice likes the cat.", "  two  spaces\nand a line", "<s> </s> <|endoftext|> [INST] literal specials",
             "ünïcödé — 東京 🙂", ""]
    assert corpus._encode(tokenizer, texts) == tokenizer(texts, add_special_tokens=False)["input_ids"]
