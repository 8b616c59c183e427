"""A pretrain stage's tokenize step (`data.tokenize.workers`) through the real operator and the
test kubelet: the Indexed Job and its config field by field; then a corpus whose last shard the
streaming reader refuses (a `.json` list: preflight reads it, pretraining streams .txt/.jsonl/
.parquet) — attempt 1 fails, the status shows the failure, the shard is fixed, attempt 2 skips
the shards attempt 1 finished, and the stage trains on tokens it did not have to make.

What the test kubelet does not emulate (kubelet.py): the Job controller's per-index bookkeeping
while pods run (`succeeded` is written once, at the end), scheduling and resource limits (the
workers' cpu/memory are checked on the Job, not enforced), and the real kubelet's downward API
(`JOB_COMPLETION_INDEX` is taken from the same annotation, by the kubelet itself).
"""

from __future__ import annotations

import json
import random

import pytest
import yaml

from refinery_operator import builders_tokenize
from refinery.api.run import StageRun
from refinery.api.v1alpha1 import StageInputs
from refinery.core.plan import Launch
from refinery.core.tokenize import TokenizeLaunch
from tests.builders import make_pipeline

from .conftest import create_pipeline, stored, stored_all, wait_for

UID = "0f5c2a4e-7777-2222-3333-444455556666"
MODEL = {"config": {"hiddenSize": 32, "numHiddenLayers": 1, "numAttentionHeads": 2, "intermediateSize": 64,
                    "maxPositionEmbeddings": 64}, "vocabSize": 256}
WORDS = ["alice", "bob", "carol", "likes", "sees", "the cat", "a red ball", "the old tree"]


def builder(workers: int = 2):
    return make_pipeline("tok").stage(
        "pretrain", "pretrain", model=MODEL,
        data={"path": "data/shards", "tokenize": {"workers": workers, "cpu": "2", "memory": "3Gi"}},
        training={"maxSteps": 4, "saveSteps": 4, "batchSize": 4, "seqLen": 32, "loggingSteps": 2},
        retries={"application": 1, "backoffSeconds": 5},
    )


def test_the_tokenize_job_is_an_indexed_job_of_cpu_workers_on_the_stages_own_config():
    p = builder(workers=3).obj()
    p = p.model_copy(update={"metadata": p.metadata.model_copy(update={"uid": UID})})
    step = TokenizeLaunch(2, 3, Launch("pretrain", 1, StageInputs(), run=0))
    job = builders_tokenize.build_tokenize_job(p, step)
    assert job["metadata"]["name"] == "tok-pretrain-tokenize-0-2"
    assert job["metadata"]["ownerReferences"][0]["uid"] == UID
    labels = job["metadata"]["labels"]
    assert labels["refinery.dev/tokenize"] == "pretrain" and labels["refinery.dev/run"] == "0"
    assert labels["refinery.dev/attempt"] == "2" and "refinery.dev/stage" not in labels  # never read as a stage attempt
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == ("Indexed", 3, 3, 0)
    [container] = spec["template"]["spec"]["containers"]
    assert container["command"] == ["refinery-train", "tokenize", "--config", "/etc/refinery/stage.yaml",
                                    "--index", "$(JOB_COMPLETION_INDEX)", "--of", "3"]
    assert container["env"][0]["name"] == "JOB_COMPLETION_INDEX"
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "3Gi"}, "limits": {"cpu": "2", "memory": "3Gi"}}
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    config = builders_tokenize.build_tokenize_config(p, step)
    assert volumes["stage-config"]["configMap"]["name"] == config["metadata"]["name"] == "tok-pretrain-tokenize-0-2-config"
    run = StageRun.model_validate(yaml.safe_load(config["data"]["stage.yaml"]))
    assert run.stage_dir == "/workspace/default/tok/pretrain" and run.reporter is None  # the stage's folder, no reports


def write_shards(folder, shards: int = 4, docs: int = 5500) -> None:
    """22,000 documents before the bad shard: the BPE sample (20,000) never reaches it."""
    folder.mkdir(parents=True)
    r = random.Random(0)
    for i in range(shards):
        rows = [{"text": " ".join(r.choice(WORDS) for _ in range(r.randint(3, 9)))} for _ in range(docs)]
        (folder / f"part-{i}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "part-9.json").write_text(json.dumps([{"text": f"{w} and {w}"} for w in WORDS * 5]))


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_a_failed_tokenize_step_is_retried_skipping_finished_shards_then_the_stage_trains(
        emulator, cluster, start_operator, kubelet):
    shards = kubelet.claim_dir("training-data") / "data" / "shards"
    write_shards(shards)
    jobs = "batch/v1/jobs"
    status = lambda: (stored(emulator, "refinery.dev/v1alpha1/trainingpipelines", "tok") or {}).get("status") or {}  # noqa: E731
    seen = []
    async with start_operator():
        await create_pipeline(cluster, builder().manifest())
        await wait_for(lambda: status().get("phase") == "Failed" or any(
            c.get("type") == "Failed" for c in ((stored(emulator, jobs, "tok-pretrain-tokenize-0-1") or {}).get("status")
                                                or {}).get("conditions") or []), 120, what="tokenize attempt 1 to fail")
        assert status().get("phase") != "Failed", (status(), {n: [p.log[-2000:] for p in pods]
                                                              for n, pods in kubelet.job_pods.items()})
        bad = shards / "part-9.json"  # the fix: the same rows as JSON Lines, before the retry's back-off ends
        (shards / "part-9.jsonl").write_text("".join(json.dumps(row) + "\n" for row in json.loads(bad.read_text())))
        bad.unlink()

        def shown():
            stages = status().get("stages") or [{}]
            seen.append(dict(stages[0].get("tokenize") or {}, message=stages[0].get("message")))
            return status().get("phase") in ("Succeeded", "Failed")

        await wait_for(shown, 180, interval=0.2, what="the pipeline to finish")

    logs = {name: "\n".join(p.log[-3000:] for p in pods) for name, pods in kubelet.job_pods.items()}
    final = status()
    assert final["phase"] == "Succeeded", logs
    assert sorted(stored_all(emulator, jobs)) == ["tok-pretrain-1", "tok-pretrain-tokenize-0-1", "tok-pretrain-tokenize-0-2",
                                                  "tok-sources-1-fetch"]
    first = kubelet.job_pods["tok-pretrain-tokenize-0-1"]
    assert [p.env["JOB_COMPLETION_INDEX"] for p in first] == ["0", "1"]
    assert "pretraining streams .txt, .jsonl and .parquet shards, not .json" in logs["tok-pretrain-tokenize-0-1"]

    # The status showed the failure and the retry while they happened.
    retrying = [s for s in seen if s.get("retries") == 1 and s.get("phase") == "Running"]
    assert retrying and retrying[0]["lastFailure"]["reason"] == "TokenizeFailed", seen
    assert any("retry 1: the shards already complete are skipped" in (s["message"] or "") for s in retrying), seen
    tokenize = final["stages"][0]["tokenize"]
    assert (tokenize["phase"], tokenize["attempt"], tokenize["retries"], tokenize["completedWorkers"]) == ("Succeeded", 2, 1, 2)

    # Attempt 2 skipped what attempt 1 finished (the failing worker's first shards at least) and did the rest.
    counts = [json.loads(p.log.strip().splitlines()[-1]) for p in kubelet.job_pods["tok-pretrain-tokenize-0-2"]]
    assert sum(c["skipped"] + c["tokenized"] for c in counts) == 5
    assert sum(c["skipped"] for c in counts) >= 1 and sum(c["tokenized"] for c in counts) >= 1
    # The stage found every shard complete: it tokenized nothing and trained.
    assert "tokenized shard" not in logs["tok-pretrain-1"] and final["stages"][0]["phase"] == "Succeeded"
    assert final["stages"][0]["lastCheckpoint"]["step"] == 4
