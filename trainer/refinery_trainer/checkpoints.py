"""Checkpoints of a stage on the volume, and the marker that makes one *complete*.

Layout (DESIGN.md): `<stage_dir>/attempt-<n>/checkpoints/checkpoint-<step>/`, written by the
Hugging Face Trainer. A checkpoint is complete only when `CHECKPOINT_MARKER` exists in it; the
marker is written last, after every file of the checkpoint was fsynced, so a process killed
half-way through a save leaves a folder without a marker, which is never resumed from.

Only the standard library here: the operator and tests use these helpers without torch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

from refinery.api.run import CHECKPOINT_MARKER

CHECKPOINT_PREFIX = "checkpoint-"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR + "-"
_ATTEMPT_RE = re.compile(r"^attempt-(\d+)$")
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# Files a Trainer checkpoint needs to restore the model weights.
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "adapter_model.safetensors")


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def attempt_dir(stage_dir: str | os.PathLike, attempt: int) -> Path:
    return Path(stage_dir) / f"attempt-{attempt}"


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step in a `checkpoint-<step>` folder name, or None for any other name."""
    match = _CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def _attempt_of(path: Path) -> int:
    match = _ATTEMPT_RE.match(path.parent.parent.name)
    return int(match.group(1)) if match else 0


def list_checkpoints(stage_dir: str | os.PathLike) -> list[Path]:
    """Every checkpoint folder of the stage (any attempt, complete or not), newest first.

    Newest means the highest step; between equal steps, the later attempt.
    """
    found = []
    for attempt in Path(stage_dir).glob("attempt-*/checkpoints"):
        found += [p for p in attempt.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=lambda p: (checkpoint_step(p), _attempt_of(p)), reverse=True)


def read_marker(checkpoint: str | os.PathLike) -> dict | None:
    """The marker's content ({step, time, metrics}), or None when the checkpoint is not complete."""
    try:
        marker = json.loads((Path(checkpoint) / CHECKPOINT_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and "step" in marker else None


def is_checkpoint_complete(checkpoint: str | os.PathLike) -> bool:
    return read_marker(checkpoint) is not None


def complete_checkpoints(stage_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of the stage across all attempts, newest first."""
    return [p for p in list_checkpoints(stage_dir) if is_checkpoint_complete(p)]


def is_checkpoint_loadable(checkpoint: str | os.PathLike) -> bool:
    """A cheap check that a complete checkpoint has what a resume reads (state and weights)."""
    path = Path(checkpoint)
    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return any((path / name).is_file() and (path / name).stat().st_size > 0 for name in _WEIGHT_FILES)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file under `root`, then the folders, so a marker written after is durable last."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            _fsync_path(Path(folder) / name, os.O_RDONLY)
        _fsync_dir(Path(folder))


def write_marker(checkpoint: str | os.PathLike, step: int, metrics: dict[str, float] | None = None) -> dict:
    """fsync the checkpoint's files, then atomically write its marker. Returns the marker."""
    path = Path(checkpoint)
    fsync_tree(path)
    marker = {"step": step, "time": now_rfc3339(), "metrics": metrics or {}}
    atomic_write_text(path / CHECKPOINT_MARKER, json.dumps(marker, sort_keys=True))
    return marker


def rotate_checkpoints(stage_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Delete complete checkpoints beyond the `keep` newest (across attempts). Returns those deleted.

    The marker goes first, so a crash mid-delete leaves an incomplete folder, never a complete
    checkpoint with files missing. Incomplete folders are left alone: one may belong to a
    process that is still writing it.
    """
    removed = complete_checkpoints(stage_dir)[keep:]
    for path in removed:
        delete_checkpoint(path)
    return removed


def delete_checkpoint(path: str | os.PathLike) -> None:
    """Marker first: from then on the folder is partial, whatever happens to the rest."""
    (Path(path) / CHECKPOINT_MARKER).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a temporary sibling, fsync it, rename it over `path`, fsync the folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_path(path: Path, flags: int) -> None:
    try:
        fd = os.open(path, flags)
    except OSError:
        return  # vanished (e.g. a temporary file renamed meanwhile)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on read-only descriptors or folders
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    _fsync_path(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
