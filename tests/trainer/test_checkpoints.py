"""Checkpoint markers, discovery across attempts and rotation (no torch)."""

from __future__ import annotations

import json
from pathlib import Path

from refinery.api.run import CHECKPOINT_MARKER
from refinery_trainer import checkpoints as ckpt


def make_checkpoint(stage_dir: Path, attempt: int, step: int, complete: bool = True, weights: bool = True) -> Path:
    path = stage_dir / f"attempt-{attempt}" / "checkpoints" / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if weights:
        (path / "model.safetensors").write_bytes(b"weights")
    if complete:
        ckpt.write_marker(path, step, {"trainLoss": 1.0})
    return path


def names(paths):
    return [f"{p.parent.parent.name}/{p.name}" for p in paths]


def test_complete_checkpoints_are_newest_first_across_attempts(tmp_path):
    make_checkpoint(tmp_path, 1, 10)
    make_checkpoint(tmp_path, 1, 20)
    make_checkpoint(tmp_path, 1, 30, complete=False)  # killed while saving
    make_checkpoint(tmp_path, 2, 20)  # the resumed attempt re-did step 20
    make_checkpoint(tmp_path, 2, 25)
    (tmp_path / "attempt-2" / "checkpoints" / "README.md").write_text("model card")
    assert names(ckpt.complete_checkpoints(tmp_path)) == [
        "attempt-2/checkpoint-25", "attempt-2/checkpoint-20", "attempt-1/checkpoint-20", "attempt-1/checkpoint-10"]
    assert names(ckpt.list_checkpoints(tmp_path))[0] == "attempt-1/checkpoint-30"


def test_no_checkpoints_at_all(tmp_path):
    assert ckpt.complete_checkpoints(tmp_path / "missing") == []


def test_marker_holds_step_time_metrics_and_is_written_atomically(tmp_path):
    path = make_checkpoint(tmp_path, 1, 7)
    marker = json.loads((path / CHECKPOINT_MARKER).read_text())
    assert marker["step"] == 7 and marker["metrics"] == {"trainLoss": 1.0} and marker["time"].endswith("Z")
    assert ckpt.read_marker(path) == marker
    assert not list(path.glob(".*tmp*"))


def test_a_garbled_marker_is_not_complete(tmp_path):
    path = make_checkpoint(tmp_path, 1, 5)
    (path / CHECKPOINT_MARKER).write_text("{half")
    assert not ckpt.is_checkpoint_complete(path)


def test_loadable_needs_state_and_weights(tmp_path):
    assert ckpt.is_checkpoint_loadable(make_checkpoint(tmp_path, 1, 1))
    assert not ckpt.is_checkpoint_loadable(make_checkpoint(tmp_path, 1, 2, weights=False))
    broken = make_checkpoint(tmp_path, 1, 3)
    (broken / "trainer_state.json").write_text("")
    assert not ckpt.is_checkpoint_loadable(broken)


def test_rotation_keeps_the_newest_complete_and_leaves_partial_ones(tmp_path):
    for step in (10, 20, 30):
        make_checkpoint(tmp_path, 1, step)
    partial = make_checkpoint(tmp_path, 1, 40, complete=False)
    make_checkpoint(tmp_path, 2, 35)
    removed = ckpt.rotate_checkpoints(tmp_path, keep=2)
    assert names(removed) == ["attempt-1/checkpoint-20", "attempt-1/checkpoint-10"]
    assert not any(p.exists() for p in removed)
    assert names(ckpt.complete_checkpoints(tmp_path)) == ["attempt-2/checkpoint-35", "attempt-1/checkpoint-30"]
    assert partial.exists()


def test_checkpoint_step_parses_only_checkpoint_folders():
    assert ckpt.checkpoint_step("/x/checkpoint-120") == 120
    assert ckpt.checkpoint_step("/x/checkpoint-final") is None
    assert ckpt.checkpoint_step("/x/model") is None
