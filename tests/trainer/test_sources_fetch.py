"""`refinery-train fetch`: remote sources fetched once against real servers, verified, and every
bad source refused with a message that names it (and never a credential).

S3: moto's S3 server on 127.0.0.1 (tests/s3server.py), reached over HTTP by boto3. https: a
local http.server. hf://: a hub cache laid out as huggingface_hub writes it, read with
HF_HUB_OFFLINE=1 (tests/hubcache.py); the hub's HTTP API itself stays untested here.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from refinery.api.run import FETCH_RESULT_FILE, FetchRun
from refinery.api.sources import SOURCE_MARKER, parse_source, source_dir
from refinery.api.v1alpha1 import Stage
from refinery_trainer.errors import SourceError
from refinery_trainer.sources import s3 as s3_source
from refinery_trainer.sources.fetch import fetch_source, run_fetch
from tests.hubcache import add_repo
from tests.s3server import start_moto_server

BUCKET = "corpus"
ROWS = b"".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}).encode() + b"\n" for i in range(20))


@pytest.fixture(scope="module")
def s3():
    server = start_moto_server()
    client = server.client()
    client.create_bucket(Bucket=BUCKET)
    for i in range(3):
        client.put_object(Bucket=BUCKET, Key=f"shards/part-{i}.jsonl", Body=ROWS)
    client.put_object(Bucket=BUCKET, Key="shards/README.md", Body=b"not data")
    client.put_object(Bucket=BUCKET, Key="sft.jsonl", Body=ROWS)
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3, monkeypatch):
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    return s3


def test_an_s3_object_is_fetched_once_and_verified(s3_env, tmp_path):
    before = s3_env.gets(BUCKET, "sft.jsonl")
    status = fetch_source(parse_source("s3://corpus/sft.jsonl"), str(tmp_path))
    assert Path(status.path).read_bytes() == ROWS
    assert status.resolved == hashlib.md5(ROWS).hexdigest()  # the ETag of a single-part object
    assert (status.files, status.bytes) == (1, len(ROWS))
    again = fetch_source(parse_source("s3://corpus/sft.jsonl"), str(tmp_path))
    assert again.fetched_at == status.fetched_at  # the marker's record: nothing fetched again
    assert s3_env.gets(BUCKET, "sft.jsonl") - before == 1  # the server's own log: one GetObject


def test_a_glob_fetches_only_matching_shards(s3_env, tmp_path):
    status = fetch_source(parse_source("s3://corpus/shards/*.jsonl"), str(tmp_path))
    files = sorted(p.name for p in Path(status.path).iterdir())
    assert files == ["part-0.jsonl", "part-1.jsonl", "part-2.jsonl"]
    assert status.resolved.startswith("sha256:") and status.files == 3


def test_a_folder_without_its_marker_is_fetched_again(s3_env, tmp_path):
    ref = parse_source("s3://corpus/shards/")
    status = fetch_source(ref, str(tmp_path))
    folder = Path(source_dir(str(tmp_path), ref.uri))
    (folder / SOURCE_MARKER).unlink()  # as if the fetch died before its last write
    Path(status.path, "part-0.jsonl").write_bytes(b"torn")
    before = s3_env.gets(BUCKET, "shards/part-0.jsonl")
    again = fetch_source(ref, str(tmp_path))
    assert Path(again.path, "part-0.jsonl").read_bytes() == ROWS
    assert s3_env.gets(BUCKET, "shards/part-0.jsonl") == before + 1


@pytest.mark.parametrize(("uri", "expected"), [
    ("s3://corpus/no-such.jsonl", "s3://corpus/no-such.jsonl: not found"),
    ("s3://no-such-bucket/sft.jsonl", "s3://no-such-bucket/sft.jsonl: not found"),
    ("s3://corpus/nothing-here/", "s3://corpus/nothing-here/: no objects match"),
])
def test_missing_s3_sources_fail_as_application_errors(s3_env, tmp_path, uri, expected):
    with pytest.raises(SourceError) as err:
        fetch_source(parse_source(uri), str(tmp_path))
    assert str(err.value).startswith(expected) and not err.value.transient


def test_s3_access_denied_names_the_uri_not_the_key(s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "planted-secret-0123456789")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPLANTEDKEY")
    s3_env.enforce_auth()
    try:
        with pytest.raises(SourceError) as err:
            fetch_source(parse_source("s3://corpus/sft.jsonl"), str(tmp_path))
    finally:
        s3_env.enforce_auth(False)
    assert "s3://corpus/sft.jsonl: access denied" in str(err.value) and not err.value.transient
    assert "planted-secret" not in str(err.value) and "AKIAPLANTEDKEY" not in str(err.value)


def test_an_unreachable_endpoint_is_transient_and_retried(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(SourceError) as err:
        fetch_source(parse_source("s3://corpus/sft.jsonl"), str(tmp_path), attempts=2, backoff_s=0.01)
    assert err.value.transient and str(err.value) == "s3://corpus/sft.jsonl: cannot reach the S3 endpoint: EndpointConnectionError"
    assert "attempt 1 of 2" in caplog.text


def test_missing_credentials_are_an_application_error(s3_env, tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(SourceError, match="s3://corpus/sft.jsonl: no AWS credentials: give the pods") as err:
        fetch_source(parse_source("s3://corpus/sft.jsonl"), str(tmp_path))
    assert not err.value.transient


def test_an_object_replaced_during_the_fetch_is_refused(s3_env, tmp_path):
    client = s3_env.client()
    client.put_object(Bucket=BUCKET, Key="moving.jsonl", Body=ROWS)
    ref = parse_source("s3://corpus/moving.jsonl")
    listed = s3_source.list_objects(s3_source.client(), ref)
    client.put_object(Bucket=BUCKET, Key="moving.jsonl", Body=ROWS + ROWS)  # a new version lands
    size, etag, _ = listed["moving.jsonl"]
    with pytest.raises(SourceError, match="changed while it was being fetched"):
        try:
            s3_source._download(s3_source.client(), ref, "moving.jsonl", size, etag, tmp_path / "x")
        except Exception as exc:  # noqa: BLE001 - map the ClientError as fetch() does
            from botocore.exceptions import ClientError

            raise s3_source._source_error(ref, exc) if isinstance(exc, ClientError) else exc


# ---- https ------------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path.startswith("/ok.jsonl"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(ROWS)))
            self.send_header("ETag", '"v1"')
            self.end_headers()
            self.wfile.write(ROWS)
        elif self.path == "/cut.jsonl":  # promises more than it sends, then hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(ROWS) * 2))
            self.end_headers()
            self.wfile.write(ROWS)
            self.close_connection = True
        elif self.path == "/busy.jsonl":
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def web():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def https_ref(web: str, path: str):
    """An https:// source pointed at the local plain-HTTP server (the client code is the same)."""
    ref = parse_source(f"https://example.test{path}")
    return ref.__class__(**{**ref.__dict__, "uri": f"{web}{path}"})


def test_an_https_file_is_fetched_with_its_etag(web, tmp_path):
    status = fetch_source(https_ref(web, "/ok.jsonl?X-Amz-Signature=planted-signature"), str(tmp_path))
    assert Path(status.path).read_bytes() == ROWS and status.resolved == f"sha256:{hashlib.sha256(ROWS).hexdigest()}"
    assert "planted-signature" not in status.uri and "planted-signature" not in status.path


def test_an_https_digest_is_checked(web, tmp_path):
    good = hashlib.sha256(ROWS).hexdigest()
    status = fetch_source(https_ref(web, f"/ok.jsonl#sha256={good}"), str(tmp_path))
    assert Path(status.path).read_bytes() == ROWS and Path(status.path).name == "ok.jsonl"
    with pytest.raises(SourceError) as refused:
        fetch_source(https_ref(web, f"/ok.jsonl#sha256={'0' * 64}"), str(tmp_path), attempts=1)
    assert f"SHA-256 is {good}, not the {'0' * 64}" in str(refused.value) and not refused.value.transient


@pytest.mark.parametrize(("path", "expected", "transient"), [
    ("/missing.jsonl", "/missing.jsonl: not found (HTTP 404)", False),
    ("/cut.jsonl", "/cut.jsonl: partial download", True),
    ("/busy.jsonl", "/busy.jsonl: failed (HTTP 503)", True),
])
def test_bad_https_sources(web, tmp_path, path, expected, transient):
    with pytest.raises(SourceError) as err:
        fetch_source(https_ref(web, path), str(tmp_path), attempts=1)
    assert expected in str(err.value) and err.value.transient == transient


# ---- hf:// (offline, from a pre-populated hub cache) ------------------------------------------


@pytest.fixture
def hub(tmp_path, monkeypatch):
    cache = tmp_path / "hub-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_an_hf_dataset_file_at_a_pinned_revision(hub, tmp_path):
    commit = add_repo(hub, "acme/chats", {"data/train.jsonl": ROWS, "README.md": b"# chats"}, repo_type="dataset")
    status = fetch_source(parse_source(f"hf://datasets/acme/chats@{commit}/data/train.jsonl"), str(tmp_path / "p"))
    assert status.resolved == commit and status.files == 1
    assert Path(status.path).read_bytes() == ROWS and status.path.endswith("files/data/train.jsonl")


def test_an_hf_model_at_main_resolves_to_its_commit(hub, tmp_path):
    commit = add_repo(hub, "acme/tiny", {"config.json": b"{}", "model.safetensors": b"\0" * 64})
    status = fetch_source(parse_source("hf://acme/tiny"), str(tmp_path / "p"))
    assert status.resolved == commit and status.files == 2


def test_a_cached_file_that_changed_under_its_revision_is_refused(hub, tmp_path):
    commit = add_repo(hub, "acme/tiny", {"config.json": b"{}", "model.safetensors": b"\0" * 64})
    blob = next(p for p in (hub / "models--acme--tiny" / "blobs").iterdir() if len(p.name) == 64)
    blob.write_bytes(b"\1" * 64)
    with pytest.raises(SourceError, match=r"model.safetensors does not match its hash at this revision"):
        fetch_source(parse_source(f"hf://acme/tiny@{commit}"), str(tmp_path / "p"))


@pytest.mark.parametrize(("uri", "expected"), [
    ("hf://acme/no-such-model", "hf://acme/no-such-model: not in the hub cache, and HF_HUB_OFFLINE is set"),
    ("hf://acme/tiny@v9", "hf://acme/tiny@v9: not in the hub cache, and HF_HUB_OFFLINE is set (revision v9)"),
])
def test_missing_hub_repos_and_revisions(hub, tmp_path, uri, expected):
    add_repo(hub, "acme/tiny", {"config.json": b"{}"})
    with pytest.raises(SourceError) as err:
        fetch_source(parse_source(uri), str(tmp_path / "p"))
    assert str(err.value).startswith(expected) and not err.value.transient


# ---- the whole fetch, then every input checked --------------------------------------------------


def pipeline_stages(**paths: str) -> list[Stage]:
    return [
        Stage.model_validate({"name": "sft", "type": "sft", "model": {"path": "base"}, "data": {"path": paths["sft"]}}),
        Stage.model_validate({"name": "rlhf", "type": "rlhf", "from": "sft", "rewardModel": "sft",
                              "data": {"path": paths["rlhf"]}}),
    ]


def test_a_misspelt_late_stage_path_fails_the_fetch_before_training(s3_env, tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text("{}")
    run = FetchRun(pipeline="p", pipeline_root=str(tmp_path / "p"), data_root=str(tmp_path),
                   stages=pipeline_stages(sft="s3://corpus/sft.jsonl", rlhf="data/prompt.jsonl"))
    result = run_fetch(run)
    assert result.phase == "Failed" and result.reason == "SourceError"
    assert result.message == f"stage 'rlhf' data.path: {tmp_path}/data/prompt.jsonl: dataset file not found"
    assert [s.uri for s in result.sources] == ["s3://corpus/sft.jsonl"]  # fetched first, kept for the retry


def test_missing_columns_in_the_first_rows_fail_with_bad_data(s3_env, tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text("{}")
    run = FetchRun(pipeline="p", pipeline_root=str(tmp_path / "p"), data_root=str(tmp_path),
                   stages=pipeline_stages(sft="s3://corpus/sft.jsonl", rlhf="s3://corpus/sft.jsonl"))
    run.stages[1].data.prompt_field = "question"
    result = run_fetch(run)
    assert result.reason == "BadData" and "missing field 'question'" in result.message
    assert "files/sft.jsonl line 1" in result.message


def test_the_cli_writes_the_result_and_exits_by_failure_class(s3_env, tmp_path):
    """One process as the initializer Job runs it; a planted credential appears nowhere it wrote."""
    secret = "planted-secret-9f8e7d6c"
    run = FetchRun(pipeline="p", pipeline_root=str(tmp_path / "p"), data_root=str(tmp_path),
                   stages=[Stage.model_validate({"name": "sft", "type": "sft", "model": {"path": "base"},
                                                 "data": {"path": "s3://corpus/sft.jsonl"}})])
    config = tmp_path / "fetch.json"
    config.write_text(json.dumps(run.dump()))
    env = {**os.environ, **s3_env.env(AWS_SECRET_ACCESS_KEY=secret, HF_TOKEN=f"hf_{secret}"),
           "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache"),
           "REFINERY_TERMINATION_LOG": str(tmp_path / "termination-log")}
    s3_env.enforce_auth()
    try:
        proc = subprocess.run([sys.executable, "-m", "refinery_trainer", "fetch", "--config", str(config)],
                              env=env, capture_output=True, text=True, timeout=120)
    finally:
        s3_env.enforce_auth(False)
    assert proc.returncode == 1, proc.stderr
    result = json.loads((tmp_path / "p" / "sources" / FETCH_RESULT_FILE).read_text())
    assert result["reason"] == "SourceError" and "s3://corpus/sft.jsonl: access denied" in result["message"]
    written = [proc.stdout, proc.stderr] + [p.read_text(errors="replace") for p in tmp_path.rglob("*")
                                             if p.is_file() and p.name != "fetch.json"]
    assert not [w for w in written if secret in w]


def test_validate_data_checks_every_input_from_a_workstation(tmp_path):
    """`refinery validate --data`: the same check as before a run, without training anything."""
    import yaml

    from refinery_operator.cli import main

    repo = Path(__file__).resolve().parents[2]
    manifest = yaml.safe_load((repo / "examples" / "tiny-chat.yaml").read_text())
    manifest["spec"]["stages"][3]["data"]["path"] = "data/prompt.jsonl"  # misspelt
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(manifest))
    args = ["validate", "--data", "--workdir", str(tmp_path / "work"), "--data-root", str(repo / "examples")]
    assert main([*args, str(repo / "examples" / "tiny-chat.yaml")]) == 0
    assert main([*args, str(path)]) == 1
    assert not list((tmp_path / "work").rglob("result.json"))  # nothing trained


def test_every_parquet_shard_is_checked_by_its_first_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = tmp_path / "prefs"
    shards.mkdir()
    good = {"chosen": ["yes"] * 500, "rejected": ["no"] * 500}
    pq.write_table(pa.table(good), shards / "part-0.parquet")
    pq.write_table(pa.table({"chosen": ["yes"] * 500, "rejected_text": ["no"] * 500}), shards / "part-1.parquet")
    stage = Stage.model_validate({"name": "reward", "type": "reward", "model": {"path": "base"}, "data": {"path": "prefs"}})
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text("{}")
    result = run_fetch(FetchRun(pipeline="p", pipeline_root=str(tmp_path / "p"), data_root=str(tmp_path), stages=[stage]))
    assert result.reason == "BadData"
    assert result.message.startswith(f"{shards}/part-1.parquet row 1: missing field 'rejected'"), result.message


# --- Verified end to end: multipart ETags and S3's own checksums ---------------------------------
PART = 5 * 1024 * 1024  # S3's smallest part size


def upload_multipart(client, key: str, data: bytes, sizes: list[int]) -> str:
    """A multipart upload with these part sizes, as the AWS CLI makes for any object over 8 MB."""
    upload = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    parts, offset = [], 0
    for number, size in enumerate(sizes, 1):
        answer = client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=number, Body=data[offset:offset + size])
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        offset += size
    return client.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload,
                                            MultipartUpload={"Parts": parts})["ETag"].strip('"')


def corrupt_at_rest(key: str, offset: int) -> None:
    """Flip one byte of the stored object in moto's backend (same process), leaving its ETag and
    checksum as they were: what bit rot or a faulty store would serve."""
    from moto.s3.models import s3_backends

    stored = next(b for a in s3_backends.values() for b in a.values() if BUCKET in b.buckets).buckets[BUCKET].keys[key]
    with stored.lock:
        stored._value_buffer.seek(offset)
        byte = stored._value_buffer.read(1)
        stored._value_buffer.seek(offset)
        stored._value_buffer.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("sizes", [[PART, PART, 123], [PART + 7, PART, 99]], ids=["even-parts", "uneven-parts"])
def test_a_multipart_object_is_verified_by_its_multipart_etag(s3_env, tmp_path, sizes):
    key = f"big-{len(sizes)}-{sizes[0]}.bin"
    data = os.urandom(sum(sizes))
    etag = upload_multipart(s3_env.client(), key, data, sizes)
    assert etag.endswith("-3")
    status = fetch_source(parse_source(f"s3://corpus/{key}"), str(tmp_path))
    assert Path(status.path).read_bytes() == data and status.resolved == etag


def test_a_corrupted_multipart_object_is_refused(s3_env, tmp_path):
    key = "big-corrupt.bin"
    upload_multipart(s3_env.client(), key, os.urandom(2 * PART + 10), [PART, PART, 10])
    corrupt_at_rest(key, PART + 17)  # in the second part
    with pytest.raises(SourceError) as refused:
        fetch_source(parse_source(f"s3://corpus/{key}"), str(tmp_path))
    print(f"\n{refused.value}")
    assert "does not match its multipart ETag" in str(refused.value) and "s3://corpus/big-corrupt.bin" in str(refused.value)


def test_an_object_with_an_s3_checksum_is_checked_against_it(s3_env, tmp_path):
    client = s3_env.client()
    client.put_object(Bucket=BUCKET, Key="checked.jsonl", Body=ROWS, ChecksumAlgorithm="SHA256")
    assert fetch_source(parse_source("s3://corpus/checked.jsonl"), str(tmp_path)).bytes == len(ROWS)
    client.put_object(Bucket=BUCKET, Key="rotten.jsonl", Body=ROWS, ChecksumAlgorithm="SHA256")
    corrupt_at_rest("rotten.jsonl", 5)
    with pytest.raises(SourceError) as refused:
        fetch_source(parse_source("s3://corpus/rotten.jsonl"), str(tmp_path))
    assert "does not match its S3 checksum" in str(refused.value), refused.value
