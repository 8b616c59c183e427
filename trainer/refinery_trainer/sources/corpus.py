"""A pretraining corpus too big for memory: documents streamed shard by shard, each shard
tokenized once into a token file of its own on the volume, and the shards' token files read back,
in shard order, as one sequence of memory-mapped blocks of `seqLen`.

    files = data_files(Path(".../files"))                     # every shard, in name order
    shards = tokenize_once(files, tokenizer, "text", cache)   # one folder per shard, marker last
    train = PackedBlocks(shards, seq_len)                     # map-style, nothing loaded

Layout: `<cache>/<tokenizer key>/<shard key>/{tokens.bin, refinery-tokens-complete.json}`. The
tokenizer key hashes the tokenizer (vocabulary and merges) and the text field; a shard's key its
path under the corpus folder, size and mtime. So a retry, a resumed attempt, a later stage over
the same data or another worker finds a shard complete and tokenizes it no more, and a big corpus
can be tokenized by N workers at once, each its own slice of shards (`slice_of`, the
`refinery-train tokenize` step: sources/tokenize.py), with never two writers of one shard.

Several files rather than one merged file: merging would copy the whole corpus once more (a
terabyte read and written again, after the parallel step, by one writer), and a shard added to a
corpus would rewrite everything. Reading several files costs one `searchsorted` per block.
Blocks are a map-style dataset over `np.memmap`s rather than an iterable one: a resumed attempt
seeks to its step (the sampler skips indices) instead of replaying the stream, and the page
cache, not the process, holds what was read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ..checkpoints import atomic_write_text, fsync_tree
from ..errors import DataError

MARKER = "refinery-tokens-complete.json"
TOKENS = "tokens.bin"
BATCH_DOCS = 512  # documents per tokenizer call (the fast tokenizer parallelises within one)
STREAM_BYTES = 64 << 20  # a single file above this size is streamed instead of read whole
WAIT_POLL_S = 1.0  # how often a rank other than 0 looks for rank 0's markers
KEY_GRACE_S = 600.0  # a rank gives up when rank 0 has not even started on its tokenizer key by then
OPEN_SHARDS = 256  # token files kept memory-mapped at once (each mapping holds a file descriptor)

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


# ----------------------------------------------------------------------------------------------
# keys and slices


def tokenizer_key(tokenizer, text_field: str) -> str:
    """A hash of what every shard's tokens depend on besides the shard: the tokenizer and the field."""
    h = hashlib.sha256(text_field.encode())
    h.update(tokenizer.backend_tokenizer.to_str().encode() if hasattr(tokenizer, "backend_tokenizer") else
             json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    return h.hexdigest()[:20]


def shard_names(files: Sequence[Path]) -> list[str]:
    """Each shard's path under the corpus' common folder (shards of subfolders may share a name)."""
    if len(files) == 1:
        return [files[0].name]
    root = Path(os.path.commonpath([str(f) for f in files]))
    return [str(f.relative_to(root)) for f in files]


def shard_key(path: Path, name: str) -> str:
    """The shard as it is now: its name, size and mtime (a rewritten shard gets a new key)."""
    st = path.stat()
    return hashlib.sha256(f"{name}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:20]


def shard_folders(files: Sequence[Path], tokenizer, text_field: str, cache_dir: Path) -> list[Path]:
    """Where each shard's tokens go, in shard order."""
    root = cache_dir / tokenizer_key(tokenizer, text_field)
    return [root / shard_key(f, name) for f, name in zip(files, shard_names(files))]


def slice_of(files: Sequence[Path], index: int, of: int) -> list[int]:
    """The shards (indices into `files`) worker `index` of `of` tokenizes: the biggest shard first,
    each to the worker with the fewest bytes so far (LPT), so one worker does not get all the big
    shards. Deterministic: every worker computes the same split from the same listing."""
    if not 0 <= index < of:
        raise ValueError(f"worker index {index} is not in [0, {of})")
    load = [0] * of
    mine = []
    for i in sorted(range(len(files)), key=lambda i: (-files[i].stat().st_size, i)):
        worker = min(range(of), key=lambda w: (load[w], w))
        load[worker] += files[i].stat().st_size
        if worker == index:
            mine.append(i)
    return sorted(mine)


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


# ----------------------------------------------------------------------------------------------
# writing


def tokenize_shard(path: Path, folder: Path, tokenizer, text_field: str) -> int:
    """Tokenize one shard into `folder` (BOS doc EOS per document, concatenated); returns its tokens.

    The caller is the shard's only writer (its slice, or rank 0). The tokens go to a temporary
    folder named for this host and process, are fsynced and renamed into place, and the marker is
    written last: a folder without one is a killed attempt's and is replaced."""
    tmp = folder.parent / f".{folder.name}.tmp-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max else np.uint32
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    count = 0
    with open(tmp / TOKENS, "wb") as out:
        batch: list[str] = []
        for doc in documents([path], text_field):
            batch.append(doc)
            if len(batch) == BATCH_DOCS:
                count += _write(out, tokenizer, batch, bos, eos, dtype)
                batch = []
        if batch:
            count += _write(out, tokenizer, batch, bos, eos, dtype)
    fsync_tree(tmp)
    if folder.exists():  # a partial folder of an earlier, killed attempt
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    atomic_write_text(folder / MARKER, json.dumps({"tokens": count, "dtype": np.dtype(dtype).name,
                                                   "file": path.name, "bytes": path.stat().st_size}) + "\n")
    return count


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens. The Rust tokenizer's `encode_batch_fast`
    (tokenizers >= 0.21: no character offsets computed) when there is one: the same ids as calling
    the transformers tokenizer, about a third faster (measured on this corpus)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _write(out, tokenizer, texts: list[str], bos: list[int], eos: list[int], dtype) -> int:
    flat: list[int] = []
    for doc in _encode(tokenizer, texts):
        flat += bos
        flat += doc  # list += list runs in C: no per-token Python work
        flat += eos
    np.asarray(flat, dtype=dtype).tofile(out)
    return len(flat)


def tokenize_slice(files: Sequence[Path], tokenizer, text_field: str, cache_dir: Path, index: int = 0,
                   of: int = 1) -> dict[str, int]:
    """Worker `index` of `of`: tokenize the shards of its slice not yet complete. Returns counts
    (`shards` in the slice, `tokenized`, `skipped`: complete before, from an earlier attempt)."""
    folders = shard_folders(files, tokenizer, text_field, cache_dir)
    mine = slice_of(files, index, of)
    counts = {"shards": len(mine), "tokenized": 0, "skipped": 0, "tokens": 0}
    for n, i in enumerate(mine, start=1):
        if is_complete(folders[i]):
            counts["skipped"] += 1
            continue
        counts["tokens"] += tokenize_shard(files[i], folders[i], tokenizer, text_field)
        counts["tokenized"] += 1
        log.info("tokenized shard %s (%d of %d in worker %d's slice)", files[i], n, len(mine), index)
    return counts


def tokenize_once(files: list[Path], tokenizer, text_field: str, cache_dir: Path, rank: int | None = None) -> list[Path]:
    """The token folders of the corpus' shards, in order, tokenizing only the shards not complete
    (none, after a `refinery-train tokenize` step or an earlier attempt).

    Only the global rank 0 (`RANK`, as torchrun sets it) writes; every other rank waits for its
    markers. Before, each rank tokenized the whole corpus into a folder of its own and renamed it
    into place, so ranks raced on one folder and N ranks did N times the work.
    """
    folders = shard_folders(files, tokenizer, text_field, cache_dir)
    if all(is_complete(f) for f in folders):
        return folders
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    if rank != 0:
        return wait_for_tokens(folders)
    counts = tokenize_slice(files, tokenizer, text_field, cache_dir)
    log.info("tokenized %d shard(s), %d complete before", counts["tokenized"], counts["skipped"])
    return folders


def wait_for_tokens(folders: list[Path]) -> list[Path]:
    """Wait until rank 0 marks every shard complete. No deadline while rank 0 works on them (a big
    corpus takes hours; when rank 0 fails, torchrun ends every rank); but if after `KEY_GRACE_S`
    rank 0 has not written a single shard for this tokenizer, the ranks keyed the corpus
    differently (each trains its own BPE for a `config` model, which should come out the same)
    and waiting would never end."""
    root = folders[0].parent
    waited, poll_s = 0.0, WAIT_POLL_S
    while not all(is_complete(f) for f in folders):
        if waited >= KEY_GRACE_S and not root.exists():
            raise DataError(f"rank 0 is not tokenizing the corpus into {root} after {waited:.0f} s: the ranks built "
                            "different tokenizers from the same data (set model.tokenizer to a saved one)")
        if waited and waited % 60 < poll_s:
            log.info("waiting for rank 0 to tokenize the corpus into %s (%.0f s)", root, waited)
        time.sleep(poll_s)
        waited += poll_s
    return folders


# ----------------------------------------------------------------------------------------------
# reading


class PackedBlocks:
    """Blocks `[start, stop)` of `seq_len` tokens of the shards' token files read as one sequence
    (a block may span two shards, as it would in one file); items as the Trainer takes them."""

    def __init__(self, folders: Path | Sequence[Path], seq_len: int, start: int = 0, stop: int | None = None):
        folders = [folders] if isinstance(folders, Path) else list(folders)
        markers = [json.loads((f / MARKER).read_text()) for f in folders]
        self.paths = [f / TOKENS for f in folders]
        self.dtypes = [m["dtype"] for m in markers]
        # offsets[k]: the first token of shard k in the whole sequence; offsets[-1]: all tokens
        self.offsets = np.concatenate([[0], np.cumsum([m["tokens"] for m in markers])]).astype(np.int64)
        self.seq_len = seq_len
        total = int(self.offsets[-1]) // seq_len
        self.start, self.stop = start, total if stop is None else min(stop, total)
        self._open: dict[int, np.memmap] = {}  # shard -> its mapping, at most OPEN_SHARDS (oldest closed first)

    def _tokens(self, k: int) -> np.ndarray:
        mapped = self._open.get(k)
        if mapped is None:
            if len(self._open) >= OPEN_SHARDS:
                del self._open[next(iter(self._open))]
            mapped = self._open[k] = np.memmap(self.paths[k], dtype=self.dtypes[k], mode="r")
        return mapped

    def __getstate__(self) -> dict:  # a DataLoader worker started by spawn maps the files again
        return {**self.__dict__, "_open": {}}

    @classmethod
    def blocks_in(cls, folders: Path | Sequence[Path], seq_len: int) -> int:
        return len(cls(folders, seq_len))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def tokens(self, begin: int, end: int) -> np.ndarray:
        """Tokens `[begin, end)` of the whole sequence (cut at its end), as int64."""
        end = min(end, int(self.offsets[-1]))
        k = int(np.searchsorted(self.offsets, begin, side="right")) - 1
        parts = []
        while begin < end:
            local = begin - int(self.offsets[k])
            take = min(end, int(self.offsets[k + 1])) - begin
            if take > 0:  # an empty shard (no documents) has no file to map
                parts.append(self._tokens(k)[local: local + take].astype(np.int64))
            begin += take
            k += 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts or [np.zeros(0, np.int64)])

    def __getitem__(self, i: int) -> dict:
        import torch

        if not 0 <= i < len(self):
            raise IndexError(i)
        offset = (self.start + i) * self.seq_len
        block = torch.from_numpy(self.tokens(offset, offset + self.seq_len))
        return {"input_ids": block, "labels": block.clone()}
