"""Local mode with remote sources: the example pipeline with every dataset in an S3 bucket (moto's
S3 server on 127.0.0.1) runs to Succeeded, each object fetched exactly once across all stages
and a re-run (the server's own request log), with the ETags in status.sources and the lineage
in result.json and model/; a stage starts from an hf://…@<commit> model read offline from a hub
cache; and a planted credential appears nowhere the run wrote.

Steps are cut down from the example's (this is about the data path, not about learning: see
test_local_mode.py for that), except the hf:// stage, which must still improve its eval loss.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.builders import tiny_chat_data_files
from tests.hubcache import add_folder
from tests.s3server import start_moto_server

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "tiny-chat.yaml"
DATA = REPO / "examples" / "data"
BUCKET = "tiny-chat"
SECRET = "planted-aws-secret-5b1f0c"
TOKEN = "hf_plantedtoken7a2e91"
SHORT = {"pretrain": 20, "sft": 20, "reward": 20, "rlhf": 4}

pytestmark = pytest.mark.slow


def refinery(args: list[str], env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "REFINERY_METRICS_PORT"} | {"OMP_NUM_THREADS": "1"} | env
    return subprocess.run([sys.executable, "-m", "refinery_operator.cli", *args, "--quiet", "--metrics-port", "0"],
                          env=env, capture_output=True, text=True, timeout=timeout)


def s3_manifest(path: Path) -> Path:
    """tiny-chat.yaml with every data path (the eval stage's answers too) as s3://tiny-chat/data/<file>,
    fewer steps, and no eval gate (a few steps do not make rlhf better than sft)."""
    manifest = yaml.safe_load(EXAMPLE.read_text())
    for stage in manifest["spec"]["stages"]:
        if stage["type"] == "eval":
            generate = stage["eval"]["generate"]
            generate.update(path=f"s3://{BUCKET}/{generate['path']}", limit=16)
            stage.pop("gate", None)
            continue
        for key in ("path", "evalPath"):
            if key in stage["data"]:
                stage["data"][key] = f"s3://{BUCKET}/{stage['data'][key]}"
        stage["training"].update(maxSteps=SHORT[stage["name"]], saveSteps=10)
        if stage["type"] == "rlhf":
            stage["rl"]["evalPrompts"] = 16
    path.write_text(yaml.safe_dump(manifest))
    return path


@pytest.fixture(scope="module")
def s3_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("s3run")
    server = start_moto_server()
    client = server.client()
    client.create_bucket(Bucket=BUCKET)
    etags = {}
    for f in tiny_chat_data_files():
        client.put_object(Bucket=BUCKET, Key=f"data/{f.name}", Body=f.read_bytes())
        etags[f"s3://{BUCKET}/data/{f.name}"] = hashlib.md5(f.read_bytes()).hexdigest()
    manifest = s3_manifest(tmp / "tiny-chat-s3.yaml")
    env = server.env(AWS_SECRET_ACCESS_KEY=SECRET, HF_TOKEN=TOKEN, HF_HUB_OFFLINE="1")
    first = refinery(["run", str(manifest), "--workdir", str(tmp / "work")], env)
    gets_after_first = server.object_gets()
    second = refinery(["run", str(manifest), "--workdir", str(tmp / "work")], env)
    yield dict(tmp=tmp, first=first, second=second, gets_after_first=gets_after_first, gets=server.object_gets(),
               etags=etags, status=json.loads((tmp / "work" / "tiny-chat" / "status.json").read_text()))
    server.stop()


def test_the_example_with_its_data_in_s3_succeeds(s3_run):
    assert s3_run["first"].returncode == 0, s3_run["first"].stdout + s3_run["first"].stderr
    assert s3_run["second"].returncode == 0, s3_run["second"].stdout + s3_run["second"].stderr
    assert s3_run["status"]["phase"] == "Succeeded"


def test_each_object_is_fetched_exactly_once_across_stages_and_a_rerun(s3_run):
    expected = {f"/{BUCKET}/data/{f.name}": 1 for f in tiny_chat_data_files()}
    assert s3_run["gets_after_first"] == expected
    assert s3_run["gets"] == expected  # the re-run read the complete folders, asked the server nothing


def test_status_sources_hold_the_etags(s3_run):
    sources = {s["uri"]: s for s in s3_run["status"]["sources"]}
    assert {u: s["resolved"] for u, s in sources.items()} == s3_run["etags"]
    for uri, source in sources.items():
        assert source["files"] == 1 and source["bytes"] == (DATA / uri.rsplit("/", 1)[-1]).stat().st_size
        assert source["fetchedAt"] and Path(source["path"]).is_file()


def test_results_and_models_carry_the_lineage(s3_run):
    root = s3_run["tmp"] / "work" / "tiny-chat"
    result = json.loads((root / "sft" / "result.json").read_text())
    assert {(s["uri"], s["resolved"]) for s in result["sources"]} == {
        (u, e) for u, e in s3_run["etags"].items() if "/sft" in u}
    lineage = json.loads((root / "sft" / "model" / "refinery-lineage.json").read_text())
    assert lineage["sources"] == result["sources"]


def test_planted_credentials_appear_nowhere_the_run_wrote(s3_run):
    run = s3_run["first"]
    written = {"stdout": run.stdout, "stderr": run.stderr, "stdout (re-run)": s3_run["second"].stdout}
    for path in (s3_run["tmp"] / "work").rglob("*"):
        if path.is_file() and path.suffix not in (".safetensors", ".png", ".pt", ".pth", ".bin"):
            written[str(path)] = path.read_text(errors="replace")
    leaks = [where for where, text in written.items() if SECRET in text or TOKEN in text]
    assert len(written) > 50 and not leaks


def test_a_stage_starts_from_an_hf_model_at_a_pinned_commit(s3_run, tmp_path):
    """sft initialised from hf://acme/tiny-chat-base@<commit>, the pretrain model of the run above
    published to an (offline) hub cache; the resolved commit lands in status.sources."""
    cache = tmp_path / "hub-cache"
    commit = add_folder(cache, "acme/tiny-chat-base", s3_run["tmp"] / "work" / "tiny-chat" / "pretrain" / "model")
    manifest = yaml.safe_load(EXAMPLE.read_text())
    sft = manifest["spec"]["stages"][1]
    sft.pop("from")
    sft["model"] = {"path": f"hf://acme/tiny-chat-base@{commit}"}
    sft["training"].update(maxSteps=60, saveSteps=30)
    manifest["spec"]["stages"] = [sft]
    manifest["spec"].pop("export", None)  # the example exports rlhf, which this pipeline lacks
    path = tmp_path / "from-hub.yaml"
    path.write_text(yaml.safe_dump(manifest))
    run = refinery(["run", str(path), "--workdir", str(tmp_path / "work"), "--data-root", str(EXAMPLE.parent)],
                   {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stdout + run.stderr
    status = json.loads((tmp_path / "work" / "tiny-chat" / "status.json").read_text())
    assert [(s["uri"], s["resolved"]) for s in status["sources"]] == [(f"hf://acme/tiny-chat-base@{commit}", commit)]
    metrics = status["stages"][0]["metrics"]
    assert metrics["evalLoss"] < metrics["initialEvalLoss"]
