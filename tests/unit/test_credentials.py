"""No credential at rest: the models (`refinery validate`, the operator) and the CRD's CEL rules
refuse the same URIs and env values, and let the legitimate look-alikes through (`hf://gpt2@main`
is a revision, `?` in an s3:// key is a glob, TOKENIZERS_PARALLELISM is not a token)."""

from __future__ import annotations

import pytest

from refinery.api.admission import admission_problems
from refinery.api.credentials import ENV_SECRET_MESSAGE, URI_CREDENTIAL_MESSAGE, env_secret_problem, uri_credential_problem
from refinery.api.load import parse_pipeline
from tests.builders import make_pipeline

URIS = [  # (uri, carries a credential)
    ("https://user:hunter2@host.example/data.jsonl", True),
    ("https://token@host.example/data.jsonl", True),
    ("https://bucket.s3.amazonaws.com/a.jsonl?X-Amz-Credential=AKIA&X-Amz-Signature=ab", True),
    ("https://host.example/a.jsonl?sig=abc", True),
    ("s3://AKIAEXAMPLE:secret@bucket/key.jsonl", True),
    ("hf://hf_token@org/name", True),
    ("hf://user:pw@datasets/org/name/train.jsonl", True),
    ("https://host.example/data.jsonl", False),
    ("hf://gpt2@main", False),
    ("hf://org/name@v1.0", False),
    ("hf://datasets/org/name@abc123/train-?.jsonl", False),
    ("s3://bucket/shards/part-?.jsonl", False),
    ("s3://bucket/user@example/data.jsonl", False),  # an @ in the key, after the bucket
    ("data/sft.jsonl", False),
]


@pytest.mark.parametrize("uri,bad", URIS)
def test_uri_credentials_python_and_cel_agree(uri, bad):
    assert (uri_credential_problem(uri) is not None) == bad
    manifest = make_pipeline("p").stage("sft", "sft").manifest()
    manifest["spec"]["stages"][0]["data"]["path"] = uri
    refused = [p for p in admission_problems(manifest) if URI_CREDENTIAL_MESSAGE in p]
    assert bool(refused) == bad, refused
    if bad:
        assert refused[0].startswith("spec.stages[0].data.path")


@pytest.mark.parametrize("name,bad", [
    ("HF_TOKEN", True), ("AWS_SECRET_ACCESS_KEY", True), ("AWS_ACCESS_KEY_ID", True), ("WANDB_API_KEY", True),
    ("DB_PASSWORD", True), ("token", True), ("GOOGLE_APPLICATION_CREDENTIALS", True),
    ("TOKENIZERS_PARALLELISM", False), ("MAX_TOKENS", False), ("AWS_ENDPOINT_URL", False), ("HF_HUB_OFFLINE", False),
])
def test_env_named_like_a_secret_takes_no_literal_value(name, bad):
    assert (env_secret_problem(name, "x") is not None) == bad
    assert env_secret_problem(name, None) is None  # valueFrom: always fine
    manifest = make_pipeline("p").stage("sft", "sft").manifest()
    manifest["spec"]["env"] = [{"name": name, "value": "x"}]
    refused = [p for p in admission_problems(manifest) if ENV_SECRET_MESSAGE in p]
    assert bool(refused) == bad, refused
    manifest["spec"]["env"] = [{"name": name, "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
    assert not admission_problems(manifest)


def test_the_refusal_never_repeats_the_secret():
    manifest = make_pipeline("p").stage("sft", "sft").manifest()
    manifest["spec"]["stages"][0]["data"]["path"] = "https://u:hunter2@host.example/a.jsonl"
    manifest["spec"]["env"] = [{"name": "HF_TOKEN", "value": "hf_hunter2"}]
    with pytest.raises(Exception) as refused:
        parse_pipeline(manifest)
    assert "hunter2" not in str(refused.value)
    assert all("hunter2" not in p for p in admission_problems(manifest))


def test_a_mixture_dataset_carries_no_credential_either():
    manifest = make_pipeline("p").stage("sft", "sft").manifest()
    data = manifest["spec"]["stages"][0]["data"]
    data.pop("path")
    data["mixture"] = [{"path": "data/sft.jsonl", "weight": 1}, {"path": "https://u:hunter2@host.example/b.jsonl", "weight": 1}]
    refused = [p for p in admission_problems(manifest) if URI_CREDENTIAL_MESSAGE in p]
    assert refused and refused[0].startswith("spec.stages[0].data.mixture[1].path"), refused
    with pytest.raises(Exception) as parsed:
        parse_pipeline(manifest)
    assert "hunter2" not in str(parsed.value)
