"""Builders for trainer tests: tiny generated datasets and StageRun configs.

    corpus = make_corpus(ws / "data/corpus.txt")
    run = stage_run(ws, "pretrain", "pretrain", data={"path": "data/corpus.txt"}, model=TINY_MODEL)
    config = write_config(ws / "pretrain.yaml", run)
    assert cli.main(["run", "--config", str(config)]) == 0
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from pathlib import Path

import pytest
import yaml

# Tiny models train faster on one thread, and the machine is shared; set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
VERBS = ["likes", "sees", "helps", "calls", "finds"]
THINGS = ["the cat", "the dog", "a red ball", "the old tree", "a blue car", "the green hat"]
FAVOURITE = {name: THINGS[i % len(THINGS)] for i, name in enumerate(NAMES)}

TINY_MODEL = {
    "config": {"hiddenSize": 64, "numHiddenLayers": 2, "numAttentionHeads": 4, "intermediateSize": 128,
               "maxPositionEmbeddings": 128},
    "vocabSize": 384,
}
FAST_TRAINING = {"maxSteps": 40, "batchSize": 8, "seqLen": 64, "saveSteps": 20, "loggingSteps": 10,
                 "learningRate": 3e-3}


def make_corpus(path: Path, docs: int = 200, seed: int = 0) -> Path:
    """Blank-line-separated documents of short sentences from a small grammar (learnable fast)."""
    r = random.Random(seed)
    texts = [
        " ".join(f"{r.choice(NAMES)} {r.choice(VERBS)} {r.choice(THINGS)}." for _ in range(r.randint(2, 5)))
        for _ in range(docs)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(texts) + "\n")
    return path


def sft_rows(n: int = 160, seed: int = 0, chat: bool = False) -> list[dict]:
    """A lookup task: each name has one favourite thing; the completion states it."""
    r = random.Random(seed)
    rows = []
    for _ in range(n):
        name = r.choice(NAMES)
        prompt, answer = f"what does {name} like?", f"{name} likes {FAVOURITE[name]}."
        if chat:
            rows.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]})
        else:
            rows.append({"prompt": prompt + "\n", "completion": answer})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def stage_run(workspace: Path, name: str, type: str, *, data: dict, training: dict | None = None,
              model: dict | None = None, from_: str | None = None, attempt: int = 1, **fields) -> dict:
    """A StageRun (camelCase, as the planner writes it) for `workspace/p/<name>`, reporting to a file."""
    stage_dir = workspace / "p" / name
    stage = {"name": name, "type": type, "data": data, "training": {**FAST_TRAINING, **(training or {})}}
    if model is not None:
        stage["model"] = model
    if from_ is not None:
        stage["from"] = from_
    return {
        "pipeline": "p", "stage": stage, "attempt": attempt,
        "stageDir": str(stage_dir), "dataRoot": str(workspace),
        "reporter": {"kind": "file", "path": str(stage_dir / "progress.json")},
        "progressIntervalS": 0.2,
        **fields,
    }


def write_config(path: Path, run: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(run))
    return path


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def wait_for_marker(stage_dir: Path, proc: subprocess.Popen, timeout_s: float) -> None:
    """Wait until attempt 1 has a complete checkpoint (its marker written); fail if `proc` exits first."""
    from refinery.api.run import CHECKPOINT_MARKER

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(stage_dir.glob(f"attempt-1/checkpoints/checkpoint-*/{CHECKPOINT_MARKER}")):
            return
        if proc.poll() is not None:
            stderr = f": {proc.stderr.read()}" if proc.stderr else ""
            pytest.fail(f"the stage exited ({proc.returncode}) before its first checkpoint{stderr}")
        time.sleep(0.01)
    pytest.fail("no complete checkpoint appeared")


@pytest.fixture(autouse=True, scope="session")
def _termination_log(tmp_path_factory):
    """Never write the real /dev/termination-log from tests (it is writable when run as root)."""
    path = tmp_path_factory.mktemp("termination") / "termination-log"
    old = os.environ.get("REFINERY_TERMINATION_LOG")
    os.environ["REFINERY_TERMINATION_LOG"] = str(path)
    yield path
    if old is None:
        os.environ.pop("REFINERY_TERMINATION_LOG", None)
    else:
        os.environ["REFINERY_TERMINATION_LOG"] = old


@pytest.fixture
def workspace(tmp_path) -> Path:
    return tmp_path / "ws"


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory, _termination_log) -> Path:
    """A pretrain stage run once per session (in-process); its stage folder. Other tests start from it.
    Its termination message is kept as `termination-message.json` there: the session's shared
    termination log holds whatever stage ran last by the time a test reads it."""
    from refinery_trainer import cli

    ws = tmp_path_factory.mktemp("pretrained") / "ws"
    make_corpus(ws / "data" / "corpus.txt")
    run = stage_run(ws, "pretrain", "pretrain", data={"path": "data/corpus.txt"}, model=TINY_MODEL,
                    training={"maxSteps": 60})
    assert cli.main(["run", "--config", str(write_config(ws / "pretrain.yaml", run))]) == 0
    (ws / "p" / "pretrain" / "termination-message.json").write_text(_termination_log.read_text())
    return ws / "p" / "pretrain"
