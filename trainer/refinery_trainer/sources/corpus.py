"""A pretraining corpus too big for memory: documents streamed shard by shard, tokenized once
into a flat token file on the volume, and read back as memory-mapped blocks of `seqLen`.

    files = data_files(Path(".../files"))                     # every shard, in name order
    tokens = tokenize_once(files, tokenizer, "text", cache)   # a marker makes it complete
    train = PackedBlocks(tokens, seq_len)                     # map-style, nothing loaded

The token file is keyed by the data (each shard's name, size and mtime) and the tokenizer (a
hash of its vocabulary and merges), so a retry, a resumed attempt or a later stage over the same
data finds it complete and tokenizes nothing. Blocks are a map-style dataset over an `np.memmap`
rather than an iterable one: a resumed attempt seeks to its step (the sampler skips indices)
instead of replaying the stream, and the page cache, not the process, holds what was read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ..checkpoints import atomic_write_text, fsync_tree
from ..errors import DataError

MARKER = "refinery-tokens-complete.json"
TOKENS = "tokens.bin"
BATCH_DOCS = 512  # documents per tokenizer call (the fast tokenizer parallelises within one)
STREAM_BYTES = 64 << 20  # a single file above this size is streamed instead of read whole
WAIT_POLL_S = 1.0  # how often a rank other than 0 looks for rank 0's marker
KEY_GRACE_S = 600.0  # a rank gives up when rank 0 has not even started on its corpus key by then

log = logging.getLogger(__name__)


def documents(files: Iterable[Path], text_field: str) -> Iterator[str]:
    """Every document of every shard, one at a time (`.txt`: blank-line-separated blocks)."""
    for path in files:
        suffix = path.suffix.lower()
        if suffix == ".txt":
            yield from _txt_documents(path)
        elif suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, start=1):
                    if line.strip():
                        yield _text(json.loads(line), text_field, path, number)
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(columns=[text_field], batch_size=1024):
                yield from (t for t in batch.column(0).to_pylist() if t)
        else:
            raise DataError(f"{path}: pretraining streams .txt, .jsonl and .parquet shards, not {suffix}")


def _txt_documents(path: Path) -> Iterator[str]:
    block: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                block.append(line.rstrip("\n"))
            elif block:
                yield "\n".join(block)
                block = []
    if block:
        yield "\n".join(block)


def _text(row, field: str, path: Path, number: int) -> str:
    if not isinstance(row, dict) or not isinstance(row.get(field), str):
        raise DataError(f"{path} line {number}: missing field {field!r} (set data.textField if the column has another name)")
    return row[field]


def corpus_key(files: list[Path], tokenizer, text_field: str) -> str:
    """A hash of what the tokens depend on: the shards as they are now, the tokenizer, the field."""
    h = hashlib.sha256(text_field.encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(tokenizer.backend_tokenizer.to_str().encode() if hasattr(tokenizer, "backend_tokenizer") else
             json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    return h.hexdigest()[:20]


def tokenize_once(files: list[Path], tokenizer, text_field: str, cache_dir: Path, rank: int | None = None) -> Path:
    """The folder of the corpus' tokens (BOS doc EOS, concatenated), tokenizing only if needed.

    Only the global rank 0 (`RANK`, as torchrun sets it) writes; every other rank waits for its
    marker. Before, each rank tokenized the whole corpus into a folder of its own and renamed it
    into place, so ranks raced on one folder (one could delete another's renamed, not yet marked
    copy as "partial") and N ranks did N times the work.
    """
    folder = cache_dir / corpus_key(files, tokenizer, text_field)
    if (folder / MARKER).is_file():
        return folder
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    if rank != 0:
        return wait_for_tokens(folder)
    tmp = cache_dir / f".{folder.name}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max else np.uint32
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    count = 0
    with open(tmp / TOKENS, "wb") as out:
        batch: list[str] = []
        for doc in documents(files, text_field):
            batch.append(doc)
            if len(batch) == BATCH_DOCS:
                count += _write(out, tokenizer, batch, bos, eos, dtype)
                batch = []
        if batch:
            count += _write(out, tokenizer, batch, bos, eos, dtype)
    fsync_tree(tmp)
    import shutil

    if (folder / MARKER).is_file():  # another rank finished first: keep its copy
        shutil.rmtree(tmp)
        return folder
    if folder.exists():  # a partial folder of an earlier, killed attempt
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    atomic_write_text(folder / MARKER, json.dumps({"tokens": count, "dtype": np.dtype(dtype).name,
                                                   "files": [f.name for f in files]}) + "\n")
    return folder


def wait_for_tokens(folder: Path) -> Path:
    """Wait until rank 0 marks `folder` complete. No deadline while rank 0 works on it (a big corpus
    takes hours; when rank 0 fails, torchrun ends every rank); but if after `KEY_GRACE_S` rank 0 is
    not writing this folder at all, the ranks keyed the corpus differently (each trains its own BPE
    for a `config` model, which should come out the same) and waiting would never end."""
    waited, poll_s = 0.0, WAIT_POLL_S
    while not (folder / MARKER).is_file():
        if waited >= KEY_GRACE_S and not folder.exists() and not any(folder.parent.glob(f".{folder.name}.tmp-*")):
            raise DataError(f"rank 0 is not tokenizing the corpus into {folder} after {waited:.0f} s: the ranks built "
                            "different tokenizers from the same data (set model.tokenizer to a saved one)")
        if waited and waited % 60 < poll_s:
            log.info("waiting for rank 0 to tokenize the corpus into %s (%.0f s)", folder, waited)
        time.sleep(poll_s)
        waited += poll_s
    return folder


def _write(out, tokenizer, texts: list[str], bos: list[int], eos: list[int], dtype) -> int:
    flat: list[int] = []
    for doc in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        flat += bos
        flat += doc  # list += list runs in C: no per-token Python work
        flat += eos
    np.asarray(flat, dtype=dtype).tofile(out)
    return len(flat)


class PackedBlocks:
    """Blocks `[start, stop)` of `seq_len` tokens from a token folder; items as the Trainer takes them."""

    def __init__(self, folder: Path, seq_len: int, start: int = 0, stop: int | None = None):
        marker = json.loads((folder / MARKER).read_text())
        self.tokens = np.memmap(folder / TOKENS, dtype=marker["dtype"], mode="r")
        self.seq_len = seq_len
        total = len(self.tokens) // seq_len
        self.start, self.stop = start, total if stop is None else min(stop, total)

    @classmethod
    def blocks_in(cls, folder: Path, seq_len: int) -> int:
        return len(cls(folder, seq_len))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, i: int) -> dict:
        import torch

        if not 0 <= i < len(self):
            raise IndexError(i)
        offset = (self.start + i) * self.seq_len
        block = torch.from_numpy(self.tokens[offset: offset + self.seq_len].astype(np.int64))
        return {"input_ids": block, "labels": block.clone()}
