"""A data source as rows: one file, or a folder of shards (a fetched prefix or glob), in name order.

Each row of a sharded table remembers its shard and line, so a BadData message still names the
file and line it is about.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..data import SUPPORTED, Table, read_table
from ..errors import DataError


def data_files(path: Path, suffixes: tuple[str, ...] = SUPPORTED) -> list[Path]:
    """The file itself, or every data file with one of `suffixes` under a folder (recursively, by name)."""
    if not path.is_dir():
        return [path]
    found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not found:
        raise DataError(f"{path}: no data files ({', '.join(suffixes)}) in this folder")
    return found


@dataclass
class ShardedTable(Table):
    """Rows of several files; `shards[i]` is the file row i came from."""

    shards: list[Path] = field(default_factory=list)

    def where(self, i: int) -> str:
        return f"{self.shards[i]} {self.unit} {self.lines[i]}"

    def _subset(self, idx: list[int]) -> Table:
        return ShardedTable(self.path, [self.rows[i] for i in idx], [self.lines[i] for i in idx], self.unit,
                            [self.shards[i] for i in idx])


def read_data(path: Path, *, text_field: str = "text") -> Table:
    """One table of a file or of every shard in a folder. Raises DataError."""
    files = data_files(path)
    if len(files) == 1 and files[0] == path:
        return read_table(path, text_field=text_field)
    rows, lines, shards = [], [], []
    for f in files:
        table = read_table(f, text_field=text_field)
        rows += table.rows
        lines += table.lines
        shards += [f] * len(table.rows)
    return ShardedTable(path, rows, lines, "line", shards)
