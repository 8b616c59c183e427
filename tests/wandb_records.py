"""Read back what a W&B run wrote offline: the records of its `run-<id>.wandb` transaction log.

W&B keeps no Python reader of this file (its Go core writes and syncs it), so this is the few lines
of its framing, LevelDB's log format: a 7-byte file header (":W&B", a magic number, a version), then
32 KiB blocks of chunks, each a CRC (4 bytes), a length (2, little-endian) and a type (FULL=1,
FIRST=2, MIDDLE=3, LAST=4); a block's tail shorter than a chunk header is padding. Each record is a
`wandb_internal_pb2.Record`, parsed with W&B's own protobuf definitions.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, pos)
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            yield wandb_internal_pb2.Record.FromString(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield wandb_internal_pb2.Record.FromString(pending + chunk)


class OfflineRun:
    """One offline run folder's run settings, config, history rows, final summary and artifacts."""

    def __init__(self, folder: Path) -> None:
        [log] = folder.glob("run-*.wandb")
        self.run: Any = None
        self.config: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self.artifacts: list[Any] = []
        self.exit_code: int | None = None
        for record in records(log):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                self.run = record.run
                self.config.update({u.key: json.loads(u.value_json) for u in record.run.config.update})
            elif kind == "config":
                self.config.update({u.key: json.loads(u.value_json) for u in record.config.update})
            elif kind == "history":
                self.history.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item})
            elif kind == "summary":
                self.summary.update({"/".join(u.nested_key) or u.key: json.loads(u.value_json) for u in record.summary.update})
            elif kind == "artifact":
                self.artifacts.append(record.artifact)
            elif kind == "exit":
                self.exit_code = record.exit.exit_code
