"""Local mode runs a pretrain stage's tokenize step (`data.tokenize.workers: 2`) as the operator
does, before the stage: `refinery-train tokenize --workers 2`, two processes each taking its slice
of the shards; the status shows the step; the stage then tokenizes nothing and trains."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import yaml

from tests.builders import make_pipeline

pytestmark = pytest.mark.slow

WORDS = ["alice", "bob", "carol", "likes", "sees", "the cat", "a red ball", "the old tree"]
MODEL = {"config": {"hiddenSize": 32, "numHiddenLayers": 1, "numAttentionHeads": 2, "intermediateSize": 64,
                    "maxPositionEmbeddings": 64}, "vocabSize": 256}


def test_local_mode_tokenizes_with_n_worker_processes_before_the_stage(tmp_path):
    shards = tmp_path / "data" / "shards"
    shards.mkdir(parents=True)
    r = random.Random(1)
    for i in range(5):
        rows = [{"text": " ".join(r.choice(WORDS) for _ in range(r.randint(3, 9)))} for _ in range(400)]
        (shards / f"part-{i}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    manifest = make_pipeline("tok", namespace=None).stage(
        "pretrain", "pretrain", model=MODEL, data={"path": "data/shards", "tokenize": {"workers": 2}},
        training={"maxSteps": 4, "saveSteps": 4, "batchSize": 4, "seqLen": 32, "loggingSteps": 2},
    ).manifest()
    (tmp_path / "tok.yaml").write_text(yaml.safe_dump(manifest))
    env = {k: v for k, v in os.environ.items() if k != "REFINERY_METRICS_PORT"} | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "refinery_operator.cli", "run", str(tmp_path / "tok.yaml"), "--workdir",
                           str(tmp_path / "runs"), "--quiet", "--metrics-port", "0"], env=env, capture_output=True,
                          text=True, timeout=300)
    root = tmp_path / "runs" / "tok"
    logs = {p.name: p.read_text() for p in (root / ".runs").glob("*.log")}
    assert done.returncode == 0, (done.stderr[-3000:], logs)
    [stage] = json.loads((root / "status.json").read_text())["stages"]
    assert stage["phase"] == "Succeeded"
    assert {k: stage["tokenize"][k] for k in ("phase", "workers", "attempt", "completedWorkers", "retries")} == {
        "phase": "Succeeded", "workers": 2, "attempt": 1, "completedWorkers": 2, "retries": 0}
    counts = json.loads(logs["pretrain-tokenize-0-1.log"].strip().splitlines()[-1])
    assert (counts["shards"], counts["tokenized"], counts["skipped"]) == (5, 5, 0)
    workers = {line.split("worker ")[1].split("'")[0] for line in logs["pretrain-tokenize-0-1.log"].splitlines()
               if "tokenized shard" in line}
    assert workers == {"0", "1"}  # both slices, in two processes
    assert "tokenized shard" not in logs["pretrain-1.log"]  # the stage found every shard complete
