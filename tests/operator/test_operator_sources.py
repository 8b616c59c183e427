"""Remote sources through the real operator (kmock's emulator + the test kubelet, conftest.py):
examples/tiny-chat.yaml with its data in an S3 bucket (moto's S3 server on 127.0.0.1) and its
credentials in a Secret referenced by `spec.envFrom`. One initializer Job fetches every object
once before the first stage; the stages read the fetched copies; a re-run fetches nothing;
status.sources holds the ETags; the planted secret appears nowhere the run wrote. And a
misspelt rlhf path fails the pipeline before any stage Job exists — also when no input is
remote (every pipeline gets the initializer).

Steps are cut down from the example's: this is about the data path (tests/cluster/test_tiny_chat_on_node.py
runs the whole example on a real node).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path

import pytest
import yaml

from refinery_operator.handlers import RESYNC_S
from refinery_operator.k8s import PIPELINES
from tests.builders import tiny_chat_data_files
from tests.s3server import start_moto_server

from .conftest import NAMESPACE, create_pipeline, stored, stored_all, wait_for

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "examples" / "data"
BUCKET = "tiny-chat"
SECRET = "planted-operator-secret-3c9d1e"
SHORT = {"pretrain": 20, "sft": 20, "reward": 20, "rlhf": 4}
pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


@pytest.fixture
def s3():
    server = start_moto_server()
    client = server.client()
    client.create_bucket(Bucket=BUCKET)
    for f in tiny_chat_data_files():
        client.put_object(Bucket=BUCKET, Key=f"data/{f.name}", Body=f.read_bytes())
    yield server
    server.stop()


def manifest(name: str, s3_url: str, typo: bool = False) -> dict:
    m = yaml.safe_load((REPO / "examples" / "tiny-chat.yaml").read_text())
    m["metadata"]["name"] = name
    m["spec"]["env"] = [{"name": "AWS_ENDPOINT_URL", "value": s3_url}, {"name": "AWS_DEFAULT_REGION", "value": "us-east-1"}]
    m["spec"]["envFrom"] = [{"secretRef": {"name": "s3-credentials"}}]
    # The four training stages: the eval stage and the export add Jobs, not sources to fetch (the eval
    # stage's answers from S3 are tested in local mode, tests/local/test_sources_local.py).
    m["spec"]["stages"] = [s for s in m["spec"]["stages"] if s["type"] != "eval"]
    m["spec"].pop("export", None)
    for stage in m["spec"]["stages"]:
        for key in ("path", "evalPath"):
            if key in stage["data"]:
                stage["data"][key] = f"s3://{BUCKET}/{stage['data'][key]}"
        stage["training"].update(maxSteps=SHORT[stage["name"]], saveSteps=10)
        if stage["type"] == "rlhf":
            stage["rl"]["evalPrompts"] = 16
            if typo:
                stage["data"]["path"] = "data/prompt.jsonl"  # on the volume, misspelt
    return m


async def create_secret(cluster) -> None:  # noqa: ANN001 - k8s.Cluster
    data = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": SECRET}
    await cluster.request("POST", f"/api/v1/namespaces/{NAMESPACE}/secrets", body={
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-credentials", "namespace": NAMESPACE},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})


def status_of(emulator, name: str) -> dict:
    return (stored(emulator, "refinery.dev/v1alpha1/trainingpipelines", name) or {}).get("status") or {}


async def test_s3_data_is_fetched_once_by_one_initializer_job(emulator, cluster, start_operator, kubelet, s3):
    await create_secret(cluster)
    async with start_operator():
        await create_pipeline(cluster, manifest("tiny-chat", s3.url))
        await wait_for(lambda: status_of(emulator, "tiny-chat").get("phase") in ("Succeeded", "Failed"), 300,
                       interval=0.2, what="the pipeline to finish")
        status = status_of(emulator, "tiny-chat")
        assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[:3000]
        gets_first = s3.object_gets()
        # A re-run of the last stage reads the fetched copy again: nothing is downloaded.
        await cluster.request("PATCH", PIPELINES.path(NAMESPACE, "tiny-chat"), content_type="application/merge-patch+json",
                              body={"metadata": {"annotations": {"refinery.dev/rerun-from": "rlhf"}}})
        await wait_for(lambda: "tiny-chat-rlhf-2" in stored_all(emulator, "batch/v1/jobs"), 60, what="the re-run")
        await wait_for(lambda: status_of(emulator, "tiny-chat").get("phase") == "Succeeded"
                       and status_of(emulator, "tiny-chat")["stages"][3]["run"] == 1, 120, what="the re-run to finish")

    jobs = stored_all(emulator, "batch/v1/jobs")
    assert sorted(jobs) == sorted(["tiny-chat-sources-1-fetch", "tiny-chat-pretrain-1", "tiny-chat-sft-1",
                                   "tiny-chat-reward-1", "tiny-chat-rlhf-1", "tiny-chat-rlhf-2"])
    init = jobs["tiny-chat-sources-1-fetch"]["spec"]["template"]["spec"]["containers"][0]
    assert init["command"][:2] == ["refinery-train", "fetch"]
    assert init["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    for name, job in jobs.items():
        assert job["spec"]["template"]["spec"]["containers"][0]["envFrom"] == init["envFrom"], name

    expected = {f"/{BUCKET}/data/{f.name}": 1 for f in tiny_chat_data_files() if f.name != "answers_eval.jsonl"}
    assert gets_first == expected  # the S3 server's own log: one GetObject per object, for all stages
    assert s3.object_gets() == expected  # and none for the re-run
    status = status_of(emulator, "tiny-chat")
    etags = {f"s3://{BUCKET}/data/{f.name}": hashlib.md5(f.read_bytes()).hexdigest() for f in tiny_chat_data_files()
             if f.name != "answers_eval.jsonl"}
    assert {s["uri"]: s["resolved"] for s in status["sources"]} == etags

    # The planted secret: nowhere in the API objects (but the Secret itself), Events, logs or the volume.
    written = {f"{key}": json.dumps(obj.raw) for key, obj in emulator.objects.items() if "secrets" not in str(key[0])}
    for path in kubelet.root.rglob("*"):
        if path.is_file() and path.suffix not in (".safetensors", ".pt", ".pth", ".bin"):
            written[str(path)] = path.read_text(errors="replace")
    encoded = base64.b64encode(SECRET.encode()).decode()
    assert len(written) > 50
    assert not [where for where, text in written.items() if SECRET in text or encoded in text]


async def test_a_misspelt_late_stage_path_fails_before_any_stage_job(emulator, cluster, start_operator, kubelet, s3):
    await create_secret(cluster)
    started = time.monotonic()
    async with start_operator():
        await create_pipeline(cluster, manifest("typo", s3.url, typo=True))
        await wait_for(lambda: status_of(emulator, "typo").get("phase") == "Failed", 120, interval=0.1,
                       what="the pipeline to fail")
    took = time.monotonic() - started
    status = status_of(emulator, "typo")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "SourceError"
    assert "stage 'rlhf' data.path: " in failed["message"]  # the volume path, as the pod saw it
    assert failed["message"].endswith("/data/prompt.jsonl: dataset file not found"), failed["message"]
    assert sorted(stored_all(emulator, "batch/v1/jobs")) == ["typo-sources-1-fetch"]  # no stage ever started
    print(f"\na misspelt rlhf data path failed the pipeline {took:.1f}s after it was created")


async def test_a_misspelt_last_stage_path_on_the_volume_fails_before_any_stage_job(emulator, cluster, start_operator,
                                                                                   kubelet):
    """No remote source at all: examples/tiny-chat.yaml as it ships (every input a path on the
    volume, which the kubelet provisions with examples/data/), its last stage's input misspelt.
    The initializer Job really runs `refinery-train fetch` and finds the file missing."""
    m = yaml.safe_load((REPO / "examples" / "tiny-chat.yaml").read_text())
    m["metadata"]["name"] = "local-typo"
    last = m["spec"]["stages"][-1]
    assert last["type"] == "eval" and last["eval"]["generate"]["path"] == "data/answers_eval.jsonl"
    last["eval"]["generate"]["path"] = "data/answer_eval.jsonl"
    async with start_operator():
        started = time.monotonic()
        await create_pipeline(cluster, m)
        await wait_for(lambda: status_of(emulator, "local-typo").get("phase") == "Failed", 120, interval=0.1,
                       what="the pipeline to fail")
        took = time.monotonic() - started
    status = status_of(emulator, "local-typo")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "SourceError", failed
    assert "stage 'eval' eval.generate.path: " in failed["message"], failed["message"]
    assert failed["message"].endswith("/data/answer_eval.jsonl: dataset file not found"), failed["message"]
    checked = next(c for c in status["conditions"] if c["type"] == "InputsChecked")
    assert (checked["status"], checked["reason"]) == ("False", "SourceError")
    assert sorted(stored_all(emulator, "batch/v1/jobs")) == ["local-typo-sources-1-fetch"]  # no stage ever started
    assert all(s["phase"] == "Pending" and s["attempt"] == 0 for s in status["stages"])
    print(f"\na misspelt last-stage path on the volume failed the pipeline {took:.1f}s after it was created")
    # Failed on the initializer Job's own event, not at the daemon's RESYNC_S backstop: the time is
    # the fetch process's (5 s here on 2 cores under a load of 7), which is the machine's speed.
    assert took < RESYNC_S / 2, took


async def test_an_unreachable_store_is_retried_as_infrastructure_then_fails(emulator, cluster, start_operator, kubelet):
    """Connection refused is transient: the fetch retries, exits 75, the Job's podFailurePolicy
    files it as infrastructure, and the operator starts the initializer again (3 retries)."""
    await create_secret(cluster)
    m = manifest("down", "http://127.0.0.1:9")  # the discard port: nothing listens
    for stage in m["spec"]["stages"]:
        stage.get("data", {}).pop("evalPath", None)
    async with start_operator():
        await create_pipeline(cluster, m)
        await wait_for(lambda: status_of(emulator, "down").get("phase") == "Failed", 300, interval=0.2,
                       what="the pipeline to fail")
    failed = next(c for c in status_of(emulator, "down")["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "SourceError" and "cannot reach the S3 endpoint" in failed["message"], failed
    assert sorted(stored_all(emulator, "batch/v1/jobs")) == [f"down-sources-{n}-fetch" for n in (1, 2, 3, 4)]
    job = stored(emulator, "batch/v1/jobs", "down-sources-1-fetch")
    assert "rule at index 2" in next(c for c in job["status"]["conditions"] if c["type"] == "Failed")["message"]
