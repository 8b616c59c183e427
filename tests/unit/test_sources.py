"""Source URIs (api/sources.py) and the initializer's decisions (core/sources.py), table-driven."""

from __future__ import annotations

import datetime

import pytest

from refinery_operator import builders, builders_sources
from refinery.api.load import InvalidManifest, parse_pipeline
from refinery.api.run import FetchResult
from refinery.api.sources import (
    SourceStatus, SourceUriError, display_uri, fetched_path, matches, parse_source, single_file_name, source_key,
)
from refinery.api.v1alpha1 import Phase, PipelineStatus, StageStatus
from refinery.core.conditions import get_condition
from refinery.core.plan import AttemptState, Observed, plan
from refinery.core.sources import (
    INPUTS_CHECKED, REASON_CHECKING_INPUTS, REASON_INPUTS_CHECKED, InitializerDecision, decide_initializer,
    initializer_launch, needs_initializer, record_inputs_check, source_failure_status, stage_source_paths,
)
from tests.builders import chat_pipeline, make_pipeline

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


def test_pipelines_with_only_volume_paths_get_the_initializer_too():
    p = make_pipeline("p").stage("pretrain", "pretrain").obj()  # data/pretrain.txt on the volume
    assert needs_initializer(p)
    assert decide_initializer(p, [], None, None) == InitializerDecision(ready=False, launch=1)
    assert any(o["kind"] == "ConfigMap" and o["metadata"]["name"] == "p-init-sources" for o in builders.build_pipeline_objects(p))
    role = next(o for o in builders.build_pipeline_objects(p) if o["kind"] == "Role")
    assert "p-init-sources" in role["rules"][0]["resourceNames"]  # the initializer may report its result


def test_no_stage_starts_before_the_sources_are_ready():
    import datetime

    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    waiting = plan(s3_pipeline(), Observed(sources_ready=False), ROOT, now)
    assert not waiting.launches and waiting.waiting_for_inputs == ("pretrain",)
    assert [l.stage for l in plan(s3_pipeline(), Observed(), ROOT, now).launches] == ["pretrain"]


# ----------------------------------------------------------------------------------------------
# A pipeline whose inputs are all on the volume, through the decisions one reconcile makes:
# decide_initializer -> plan -> initializer_launch -> record_inputs_check (reconcile.py).

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def local_pipeline(generation: int | None = 1, previous: PipelineStatus | None = None):
    p = chat_pipeline("p").obj()  # every input a path on the volume: data/pretrain.txt ... data/prompts.jsonl
    return p.model_copy(update={"metadata": p.metadata.model_copy(update={"generation": generation}), "status": previous})


def reconcile_once(pipeline, attempts=(), record=None, taken=0, stage_attempts=None):
    """What one reconcile decides: (the initializer attempt created, the stages launched, the status)."""
    decision = decide_initializer(pipeline, list(attempts), record, pipeline.status, taken)
    assert decision.failure is None
    result = plan(pipeline, Observed(attempts=stage_attempts or {}, sources_ready=decision.ready), ROOT, NOW)
    launch = initializer_launch(decision, result.waiting_for_inputs)
    record_inputs_check(result.status, pipeline, decision, launch, NOW)
    return launch, [l.stage for l in result.launches], result.status


def inputs_condition(status):
    c = get_condition(status.conditions, INPUTS_CHECKED)
    return c and (c.status, c.reason, c.observed_generation)


def test_a_local_only_pipeline_checks_its_inputs_before_the_first_stage():
    launch, stages, status = reconcile_once(local_pipeline())
    assert (launch, stages) == (1, [])  # the initializer Job first, no stage Job
    assert status.stage("pretrain").phase == Phase.pending
    assert inputs_condition(status) == ("False", REASON_CHECKING_INPUTS, 1)
    assert "p-sources-1-fetch" in get_condition(status.conditions, INPUTS_CHECKED).message

    # While it runs: nothing more is created.
    running = local_pipeline(previous=status)
    assert reconcile_once(running, [attempt(1, "Running")])[:2] == (None, [])


def test_once_the_check_passes_the_stages_start_and_it_is_recorded_for_the_generation():
    _, _, status = reconcile_once(local_pipeline())
    launch, stages, status = reconcile_once(local_pipeline(previous=status), [attempt(1, "Succeeded")],
                                            FetchResult(phase="Succeeded"))
    assert (launch, stages) == (None, ["pretrain"])
    assert inputs_condition(status) == ("True", REASON_INPUTS_CHECKED, 1)
    assert "p-sources-1-fetch" in get_condition(status.conditions, INPUTS_CHECKED).message


def test_a_recorded_check_is_not_run_again():
    """Retries, later stages and a restarted operator (no Jobs in its cache yet, or the Job deleted)
    read the condition: no initializer Job is created again for the same generation."""
    _, _, status = reconcile_once(local_pipeline(), [attempt(1, "Succeeded")], FetchResult(phase="Succeeded"))
    recorded = local_pipeline(previous=status)
    assert decide_initializer(recorded, [], None, status).ready
    # pretrain failed (an application failure with a retry budget): its retry starts without a new check
    failed = {"pretrain": [AttemptState(1, "Failed", reason="TrainerError", message="exit 1")]}
    launch, stages, after = reconcile_once(recorded, stage_attempts=failed)
    assert launch is None and inputs_condition(after) == ("True", REASON_INPUTS_CHECKED, 1)
    # the next stage, once pretrain succeeded: no new check either
    done = {"pretrain": [AttemptState(1, "Succeeded")]}
    launch, stages, after = reconcile_once(recorded, stage_attempts=done)
    assert (launch, stages) == (None, ["sft"])


def test_a_new_generation_is_checked_again_by_a_job_of_its_own():
    _, _, status = reconcile_once(local_pipeline(1), [attempt(1, "Succeeded")], FetchResult(phase="Succeeded"))
    changed = local_pipeline(2, previous=status)  # e.g. the rlhf prompts path edited
    # Generation 1's Job (attempt 1) does not count for generation 2: attempt 2 is created.
    launch, stages, status = reconcile_once(changed, [], None, taken=1)
    assert (launch, stages) == (2, [])
    assert inputs_condition(status) == ("False", REASON_CHECKING_INPUTS, 2)
    launch, stages, status = reconcile_once(local_pipeline(2, previous=status), [attempt(2, "Succeeded")],
                                            FetchResult(phase="Succeeded"), taken=2)
    assert (launch, stages) == (None, ["pretrain"]) and inputs_condition(status) == ("True", REASON_INPUTS_CHECKED, 2)


def test_a_failed_check_of_a_new_generation_fails_the_pipeline():
    bad = FetchResult(phase="Failed", reason="SourceError",
                      message="stage 'rlhf' data.path: /workspace/data/prompt.jsonl: dataset file not found")
    decision = decide_initializer(local_pipeline(2), [attempt(2, "Failed", message="exit 1")], bad, None, 2)
    assert decision.failure == bad
    status = source_failure_status(None, bad, 2, NOW)
    assert inputs_condition(status) == ("False", "SourceError", 2)
    assert status.phase == Phase.failed and get_condition(status.conditions, "Failed").reason == "SourceError"


def test_a_pipeline_with_nothing_left_to_run_is_not_checked():
    """An operator upgrade (no condition yet) or a spec change on a pipeline that already succeeded:
    no stage would start, so no initializer Job is created."""
    previous = PipelineStatus(phase=Phase.succeeded, stages=[
        StageStatus(name=s, phase=Phase.succeeded, attempt=1) for s in ("pretrain", "sft", "reward", "rlhf")])
    done = {s: [AttemptState(1, "Succeeded")] for s in ("pretrain", "sft", "reward", "rlhf")}
    launch, stages, status = reconcile_once(local_pipeline(3, previous=previous), stage_attempts=done)
    assert (launch, stages) == (None, []) and inputs_condition(status) is None


def test_stages_read_the_fetched_copies():
    p = s3_pipeline()
    assert stage_source_paths(p.spec.stage("pretrain"), ROOT) == {
        "s3://bk1/corpus/": f"{ROOT}/sources/{source_key('s3://bk1/corpus/')}/files"}
    assert stage_source_paths(p.spec.stage("sft"), ROOT) == {}


def test_the_initializer_job_gets_the_pipelines_credentials_and_nothing_more():
    """Only what a fetch reads: the s3 client's variables, the envFrom of the pipeline and of the stage
    that fetches, the mount a kept variable points into; not the training secrets of other stages."""
    secret = {"secretKeyRef": {"name": "hub", "key": "t"}}
    manifest = make_pipeline("p").stage(
        "pretrain", "pretrain", data={"path": "s3://bk1/corpus/"},
        env=[{"name": "AWS_ACCESS_KEY_ID", "valueFrom": secret}, {"name": "WANDB_API_KEY", "valueFrom": secret},
             {"name": "AWS_CA_BUNDLE", "value": "/etc/ca/bundle.pem"}],
        volumeMounts=[{"name": "cache", "mountPath": "/models", "readOnly": True}, {"name": "ca", "mountPath": "/etc/ca"}],
    ).stage("sft", "sft", from_="pretrain", envFrom=[{"secretRef": {"name": "wandb"}}],
            env=[{"name": "HF_TOKEN", "valueFrom": secret}]).manifest()
    manifest["spec"]["envFrom"] = [{"secretRef": {"name": "s3"}}]
    manifest["spec"]["volumes"] = [{"name": "cache", "persistentVolumeClaim": {"claimName": "models"}},
                                   {"name": "ca", "configMap": {"name": "ca"}}]
    p = parse_pipeline(manifest)
    job = builders_sources.build_initializer_job(p, 1)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert job["metadata"]["name"] == "p-sources-1-fetch"
    assert container["envFrom"] == [{"secretRef": {"name": "s3"}}]  # not sft's `wandb`
    ours = {v["name"] for v in builders.CACHE_ENV} | {"PYTHONUNBUFFERED"}
    user = [v["name"] for v in container["env"] if v["name"] not in ours]
    assert user == ["AWS_ACCESS_KEY_ID", "AWS_CA_BUNDLE"]  # no WANDB_API_KEY; no HF_TOKEN (nothing from the hub)
    assert [m["name"] for m in container["volumeMounts"]][3:] == ["ca"]  # the CA bundle's, not the model cache
    assert [v["name"] for v in pod["volumes"]][3:] == ["ca"]
    # A pipeline that fetches nothing remote (only checks volume paths) gets none of the user's settings.
    local = builders_sources.build_initializer_job(parse_pipeline(make_pipeline("q").stage(
        "pretrain", "pretrain", env=[{"name": "AWS_ACCESS_KEY_ID", "valueFrom": secret}]).manifest()), 1)
    assert {v["name"] for v in local["spec"]["template"]["spec"]["containers"][0]["env"]} == ours
    assert pod["securityContext"]["runAsNonRoot"] and container["securityContext"]["allowPrivilegeEscalation"] is False
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[2]["onExitCodes"]["values"] == [75] and builders.POD_FAILURE_RULES[2] == ("Infrastructure", "SourceUnavailable")
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


def test_an_initializer_whose_pod_never_starts_fails_the_pipeline_at_the_stages_start_timeout():
    """Found on the real node: an image the node has not got (ErrImageNeverPull) left the
    initializer's pod waiting and the pipeline Pending for ever. It now fails as StartTimeout at
    the shortest `startTimeoutSeconds` of the stages; a ready pod has no deadline."""
    pipeline = s3_pipeline()
    timeout = min(s.retries.start_timeout_seconds for s in pipeline.spec.stages)
    started = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    waiting = attempt(1, "Pending", start_time="2026-01-01T00:00:00Z")
    before = decide_initializer(pipeline, [waiting], None, None, 0, started + datetime.timedelta(seconds=timeout - 1))
    assert before.failure is None and before.checking
    after = decide_initializer(pipeline, [waiting], None, None, 0, started + datetime.timedelta(seconds=timeout))
    assert after.failure.reason == "StartTimeout" and "ErrImageNeverPull" in after.failure.message
    ready = attempt(1, "Running", start_time="2026-01-01T00:00:00Z", ready=True)
    assert decide_initializer(pipeline, [ready], None, None, 0, started + datetime.timedelta(days=1)).failure is None


def test_an_https_source_may_name_its_sha256():
    digest = "ab" * 32
    ref = parse_source(f"https://host.example/data/sft.jsonl#sha256={digest}")
    assert (ref.sha256, ref.url, single_file_name(ref)) == (digest, "https://host.example/data/sft.jsonl", "sft.jsonl")
    assert parse_source("https://host.example/sft.jsonl").sha256 is None
    for bad in ("#sha256=ABC", "#md5=" + "0" * 32, "#sha256=" + "0" * 63):
        with pytest.raises(SourceUriError, match="#sha256=<64 lowercase hex digits>"):
            parse_source(f"https://host.example/sft.jsonl{bad}")
