"""Source URIs (api/sources.py) and the initializer's decisions (core/sources.py), table-driven."""

from __future__ import annotations

import pytest

from refinery_operator import builders, builders_sources
from refinery_operator.api.load import InvalidManifest, parse_pipeline
from refinery_operator.api.run import FetchResult
from refinery_operator.api.sources import (
    SourceStatus, SourceUriError, display_uri, fetched_path, matches, parse_source, source_key,
)
from refinery_operator.core.plan import AttemptState, Observed, plan
from refinery_operator.core.sources import decide_initializer, stage_source_paths
from tests.builders import make_pipeline

ROOT = "/workspace/default/p"


@pytest.mark.parametrize(("uri", "kind", "fields"), [
    ("data/sft.jsonl", "path", {}),
    ("hf://acme/tiny", "hf-model", {"repo": "acme/tiny", "revision": None}),
    ("hf://gpt2@v1.0", "hf-model", {"repo": "gpt2", "revision": "v1.0"}),
    ("hf://datasets/acme/chats@abc123/data/*.parquet", "hf-dataset",
     {"repo": "acme/chats", "revision": "abc123", "pattern": "data/*.parquet"}),
    ("s3://my-bucket/corpus/", "s3", {"bucket": "my-bucket", "key": "corpus/"}),
    ("s3://my-bucket/a/b.jsonl", "s3", {"bucket": "my-bucket", "key": "a/b.jsonl"}),
    ("https://example.com/x.jsonl", "https", {}),
])
def test_uris_parse(uri, kind, fields):
    ref = parse_source(uri)
    assert ref.kind == kind and {k: getattr(ref, k) for k in fields} == fields


@pytest.mark.parametrize(("uri", "message"), [
    ("gs://bucket/x", "hf://, s3:// or https://"),
    ("http://example.com/x", "hf://, s3:// or https://"),
    ("s3://Bad_Bucket/x", "a valid bucket name"),
    ("hf://datasets/onlyname", "hf://datasets/<org>/<name>"),
    ("https://example.com/dir/", "one file"),
])
def test_bad_uris_are_refused_with_the_shape_expected(uri, message):
    with pytest.raises(SourceUriError, match="^.*" + message.replace("*", r"\*").replace("?", r"\?")):
        parse_source(uri)


def test_unknown_schemes_are_refused_by_the_models_and_the_crd():
    manifest = make_pipeline("p").stage("pretrain", "pretrain").manifest()
    manifest["spec"]["stages"][0]["data"]["evalPath"] = "ftp://host/x.txt"
    with pytest.raises(InvalidManifest) as err:
        parse_pipeline(manifest)
    assert any(p.startswith("spec.stages[0].data.evalPath") and "hf://, s3:// or https://" in p for p in err.value.problems)


def test_single_files_and_folders_land_where_stages_read_them():
    one, many = parse_source("s3://bk1/x/sft.jsonl"), parse_source("s3://bk1/x/")
    assert fetched_path(ROOT, one) == f"{ROOT}/sources/{source_key(one.uri)}/files/sft.jsonl"
    assert fetched_path(ROOT, many) == f"{ROOT}/sources/{source_key(many.uri)}/files"
    assert source_key("hf://a/b@v1") != source_key("hf://a/b@v2")  # the revision is part of the key
    assert matches(parse_source("s3://bk1/x/*.jsonl"), "x/part-1.jsonl") and not matches(many, "y/part-1.jsonl")


def test_credentials_never_reach_what_is_shown():
    assert display_uri("https://user:pw@host/f.jsonl?X-Amz-Signature=abc") == "https://host/f.jsonl"


def s3_pipeline():
    return make_pipeline("p").stage("pretrain", "pretrain", data={"path": "s3://bk1/corpus/"}).stage(
        "sft", "sft", from_="pretrain", data={"path": "data/sft.jsonl"}).obj()


def attempt(n, phase, **kw):
    return AttemptState(n, phase, **kw)


OK = FetchResult(phase="Succeeded", sources=[SourceStatus(uri="s3://bk1/corpus/", resolved="sha256:1 of 2 ETags")])
BAD = FetchResult(phase="Failed", reason="SourceError", message="s3://bk1/corpus/: access denied")
SLOW = FetchResult(phase="Failed", reason="SourceError", message="s3://bk1/corpus/: S3 error 503", transient=True)


@pytest.mark.parametrize(("attempts", "record", "expected"), [
    ([], None, dict(ready=False, launch=1, failure=None)),
    ([attempt(1, "Running")], None, dict(ready=False, launch=None, failure=None)),
    ([attempt(1, "Succeeded")], OK, dict(ready=True, launch=None, failure=None)),
    ([attempt(1, "Failed", message="exit 1")], BAD, dict(ready=False, launch=None, failure=BAD)),
    ([attempt(1, "Failed", infrastructure=True)], SLOW, dict(ready=False, launch=2, failure=None)),
    ([attempt(1, "Failed", infrastructure=True, pods_gone=False)], SLOW, dict(ready=False, launch=None, failure=None)),
    ([attempt(n, "Failed", infrastructure=True) for n in (1, 2, 3, 4)], SLOW, dict(ready=False, launch=None, failure=SLOW)),
])
def test_the_initializer_runs_once_and_is_retried_only_when_transient(attempts, record, expected):
    decision = decide_initializer(s3_pipeline(), attempts, record, None)
    assert {k: getattr(decision, k) for k in expected} == expected


def test_a_recorded_fetch_is_not_run_again():
    previous = plan(s3_pipeline(), Observed(), ROOT, __import__("datetime").datetime(2026, 1, 1)).status
    previous.sources = list(OK.sources)
    assert decide_initializer(s3_pipeline(), [], None, previous).ready


def test_pipelines_without_remote_sources_need_no_initializer():
    p = make_pipeline("p").stage("pretrain", "pretrain").obj()
    assert decide_initializer(p, [], None, None).ready
    assert not any(o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("init-sources")
                   for o in builders.build_pipeline_objects(p))


def test_no_stage_starts_before_the_sources_are_ready():
    import datetime

    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    assert not plan(s3_pipeline(), Observed(sources_ready=False), ROOT, now).launches
    assert [l.stage for l in plan(s3_pipeline(), Observed(), ROOT, now).launches] == ["pretrain"]


def test_stages_read_the_fetched_copies():
    p = s3_pipeline()
    assert stage_source_paths(p.spec.stage("pretrain"), ROOT) == {
        "s3://bk1/corpus/": f"{ROOT}/sources/{source_key('s3://bk1/corpus/')}/files"}
    assert stage_source_paths(p.spec.stage("sft"), ROOT) == {}


def test_the_initializer_job_gets_the_pipelines_credentials_and_nothing_more():
    manifest = make_pipeline("p").stage("pretrain", "pretrain", data={"path": "s3://bk1/corpus/"},
                                        env=[{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub", "key": "t"}}}],
                                        volumeMounts=[{"name": "cache", "mountPath": "/models", "readOnly": True}]).manifest()
    manifest["spec"]["envFrom"] = [{"secretRef": {"name": "s3"}}]
    manifest["spec"]["volumes"] = [{"name": "cache", "persistentVolumeClaim": {"claimName": "models"}}]
    p = parse_pipeline(manifest)
    job = builders_sources.build_initializer_job(p, 1)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert job["metadata"]["name"] == "p-sources-1-fetch"
    assert container["envFrom"] == [{"secretRef": {"name": "s3"}}]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub", "key": "t"}}} in container["env"]
    assert {"name": "cache", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]
    assert {"name": "cache", "persistentVolumeClaim": {"claimName": "models"}} in pod["volumes"]
    assert pod["securityContext"]["runAsNonRoot"] and container["securityContext"]["allowPrivilegeEscalation"] is False
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[2]["onExitCodes"]["values"] == [75] and builders.POD_FAILURE_RULES[2] == (True, "SourceUnavailable")
    role = next(o for o in builders.build_pipeline_objects(p) if o["kind"] == "Role")
    assert "p-init-sources" in role["rules"][0]["resourceNames"]


@pytest.mark.parametrize(("change", "message"), [
    ({"env": [{"name": "REFINERY_STAGE", "value": "x"}]}, "names starting with REFINERY_ are the operator's"),
    ({"env": [{"name": "A", "value": "x", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
     "set exactly one of value or valueFrom"),
    ({"volumes": [{"name": "workspace", "emptyDir": {}}]}, "the name is the operator's"),
    ({"volumes": [{"name": "host", "hostPath": {"path": "/"}}]}, "unknown field"),
])
def test_pod_settings_that_would_break_or_escape_the_pod_are_refused(change, message):
    manifest = make_pipeline("p").stage("pretrain", "pretrain").manifest()
    manifest["spec"].update(change)
    with pytest.raises(InvalidManifest) as err:
        parse_pipeline(manifest)
    assert any(message in p for p in err.value.problems), err.value.problems
