"""A stage process imports no optional package its stage does not use (DeepSpeed, vLLM, Liger;
datasets for pretrain), and a stage that uses one still gets it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

from refinery.api.v1alpha1 import Stage
from refinery_trainer.startup import hide_unused_packages, restore, unused_packages

from .conftest import TINY_MODEL, make_corpus, stage_run, write_config


def stage(**fields) -> Stage:
    base = {"name": "s", "type": "sft", "from": "x", "data": {"path": "d.jsonl"}}
    return Stage.model_validate({**base, **fields})


def test_what_each_stage_does_not_use():
    assert unused_packages(stage()) == ["deepspeed", "vllm", "liger_kernel"]
    assert unused_packages(stage(deepspeed={"zeroStage": 2}, training={"ligerKernel": True})) == ["vllm"]
    rlhf = stage(type="rlhf", rewardModel="r", rl={"generation": "vllm"})
    assert "vllm" not in unused_packages(rlhf)
    pretrain = stage(type="pretrain", model={"config": {}}, **{"from": None})
    assert "datasets" in unused_packages(pretrain)


def test_hidden_packages_look_uninstalled_until_restored():
    """In a fresh interpreter: a package already imported (as DeepSpeed is after this suite's DeepSpeed
    tests) is never hidden, so the check needs a process of its own."""
    script = ("import importlib.util, json; from refinery.api.v1alpha1 import Stage; "
              "from refinery_trainer.startup import hide_unused_packages, restore; "
              "s = Stage.model_validate({'name': 's', 'type': 'sft', 'from': 'x', 'data': {'path': 'd.jsonl'}}); "
              "h = hide_unused_packages(s); hidden = importlib.util.find_spec('deepspeed') is None; restore(h); "
              "print(json.dumps({'hidden': h, 'while': hidden, 'after': importlib.util.find_spec('deepspeed') is not None}))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert "deepspeed" in out["hidden"] and out["while"], done.stderr[-2000:]
    assert out["after"]  # installed here (the dev extra), importable again once restored


def test_a_pretrain_process_never_imports_deepspeed_or_datasets(tmp_path):
    make_corpus(tmp_path / "corpus.txt", docs=40)
    run = stage_run(tmp_path, "pretrain", "pretrain", data={"path": "corpus.txt"}, model=TINY_MODEL,
                    training={"maxSteps": 2, "batchSize": 2, "seqLen": 32, "saveSteps": 2})
    config = write_config(tmp_path / "run.yaml", run)
    script = ("import sys, json; from refinery_trainer import cli; code = cli.main(['run', '--config', sys.argv[1]]); "
              "print(json.dumps({'code': code, 'loaded': [m for m in ('deepspeed', 'datasets', 'vllm') "
              "if sys.modules.get(m) is not None]}))")
    done = subprocess.run([sys.executable, "-c", script, str(config)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "REFINERY_TERMINATION_LOG": str(tmp_path / "t")})
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == {"code": 0, "loaded": []}, done.stderr[-2000:]
    assert "Setting accelerator to CPU" not in done.stderr  # DeepSpeed's import-time warning


def test_a_pretrain_stage_reads_parquet_with_datasets_hidden(tmp_path):
    """Parquet is read with pyarrow, so hiding `datasets` from a pretrain stage costs it no format."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from refinery_trainer.data import read_table

    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"text": ["the cow says moo", "the cat says meow"]}), path)
    hidden = hide_unused_packages(stage(type="pretrain", model={"config": {}}, **{"from": None}))
    try:
        assert [r["text"] for r in read_table(path).rows] == ["the cow says moo", "the cat says meow"]
    finally:
        restore(hidden)
