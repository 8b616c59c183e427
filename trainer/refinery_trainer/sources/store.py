"""Fetched sources on the volume, with the checkpoint discipline: files first, marker last.

    <pipeline>/sources/<key>/files/...                      the fetched files (renamed into place)
    <pipeline>/sources/<key>/refinery-source-complete.json  {uri, resolved, bytes, files, ...}

A folder without the marker is a partial fetch (the process died, or verification failed) and
is fetched again from scratch; a folder with it is reused by every stage, retry and re-run.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from refinery.api.sources import FILES_DIR, SOURCE_MARKER, SourceStatus

from ..checkpoints import atomic_write_text, fsync_tree


@dataclass
class Fetched:
    """What one download produced: what the source resolved to and the files (name → size, tag)."""

    resolved: str
    files: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(size for size, _ in self.files.values())


def read_marker(folder: Path) -> SourceStatus | None:
    try:
        data = json.loads((folder / SOURCE_MARKER).read_text())
        data.pop("contents", None)  # per-file sizes and tags: for people reading the volume
        return SourceStatus.model_validate(data)
    except (OSError, ValueError, AttributeError):
        return None


def complete(folder: Path, uri: str) -> SourceStatus | None:
    """The marker of a complete fetch of `uri` in `folder`, or None (absent, partial, another URI)."""
    marker = read_marker(folder)
    if marker is None or marker.uri != uri or not (folder / FILES_DIR).is_dir():
        return None
    return marker


def partial_dir(folder: Path) -> Path:
    """A fresh scratch folder for one fetch; anything a killed fetch left there is dropped."""
    tmp = folder / f".partial-{os.getpid()}"
    for old in folder.glob(".partial-*") if folder.is_dir() else ():
        shutil.rmtree(old, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit(folder: Path, tmp: Path, status: SourceStatus, fetched: Fetched) -> SourceStatus:
    """fsync the fetched files, rename them into `files/`, then write the marker (last)."""
    fsync_tree(tmp)
    files = folder / FILES_DIR
    (folder / SOURCE_MARKER).unlink(missing_ok=True)
    if files.exists():
        shutil.rmtree(files)
    os.replace(tmp, files)
    fsync_tree(files)
    record = {**status.dump(), "contents": {name: {"bytes": size, "tag": tag} for name, (size, tag) in sorted(fetched.files.items())}}
    atomic_write_text(folder / SOURCE_MARKER, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return status


def lineage(fetched_paths) -> list[dict]:
    """{uri, resolved, bytes, files, fetchedAt} of the sources whose fetched copies a stage read."""
    out = []
    for path in fetched_paths:
        folder = Path(path)
        while folder.name != FILES_DIR and folder != folder.parent:
            folder = folder.parent
        marker = read_marker(folder.parent)
        if marker is not None:
            out.append(marker.model_dump(by_alias=True, exclude_none=True, exclude={"path", "duration_seconds"}))
    return out
