"""What the test nodes put on a claim's folder the first time a pod mounts it (tests/operator/
kubelet.py for kmock, tests/real/node.py for the real API server): every pipeline's initializer
Job really checks that each input exists and has its columns before a stage starts, so the
volume must hold what the tests' manifests read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

EXAMPLE_DATA = Path(__file__).resolve().parents[2] / "examples" / "data"


def provision_volume(folder: Path) -> None:
    """A claim's folder as the tests' pipelines expect the volume: every file of examples/data/
    under `data/` (tests/builders.py names them), plus `data/nan-loss.jsonl`, the pretrain data
    fake_stage.py plays a NaN loss on (its documents as `{"text": ...}` lines). Existing files are kept."""
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    for source in EXAMPLE_DATA.iterdir():
        if not (data / source.name).exists():
            shutil.copyfile(source, data / source.name)
    if not (data / "nan-loss.jsonl").exists():
        documents = [d.strip() for d in (EXAMPLE_DATA / "pretrain.txt").read_text().split("\n\n") if d.strip()]
        (data / "nan-loss.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
