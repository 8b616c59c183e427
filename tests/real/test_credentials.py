"""No credential at rest, on a real API server with the operator under the chart's rights.

Credentials are planted in every place a user might write them. Where the spec would store one
(a source or export URI, a literal value of a variable named like a secret) the API server refuses
the pipeline without echoing the value. Where a pipeline may legitimately name one (Secrets
through `env.valueFrom`, `envFrom` and a secret volume), the pipeline runs to the end, and then
everything the operator, its pods and the API server wrote is searched for the secret values:
the pipeline (spec and status), every ConfigMap, Job, Pod, Service and Event of the namespace,
the operator's log, every pod's log and every file on the pipeline's volume.
"""

from __future__ import annotations

import asyncio
import copy
import json

import pytest
from kubernetes.client.exceptions import ApiException

from refinery_operator.k8s import Resource

from .conftest import create_pipeline, get_pipeline, wait_until
from .test_least_privilege import finished, two_stages

pytestmark = pytest.mark.timeout(240)
SECRET = "planted-hunter2-7f3a"  # the value searched for everywhere
ENV_SECRET = "planted-aws-9c1e"
LEAK = f"user:{SECRET}@"  # how a URI would carry it

# (what the user wrote, where in the manifest) — each one refused at admission.
REFUSED_PLACES = {
    "data.path user-info": (("stages", 0, "data", "path"), f"https://{LEAK}host.example/corpus.txt"),
    "data.evalPath presigned": (("stages", 1, "data", "evalPath"), f"https://b.s3.amazonaws.com/e.jsonl?X-Amz-Signature={SECRET}"),
    "model.tokenizer user-info": (("stages", 0, "model", "tokenizer"), f"s3://{LEAK}bucket/tok/"),
    "model.hubId token": (("stages", 2, "model", "hubId"), f"{SECRET}@org/name"),
    "rl python reward presigned": (("stages", 3, "rl", "rewards", 0, "python", "path"), f"https://code.example/r.py?token={SECRET}"),
    "eval.generate.path user-info": (("stages", 4, "eval", "generate", "path"), f"https://{LEAK}host.example/held-out.jsonl"),
    "export.to user-info": (("export", "to"), f"s3://AKIA:{SECRET}@bucket/export/"),
    "env literal HF_TOKEN": (("env", 0, "value"), SECRET),
    "stage env literal AWS_SECRET_ACCESS_KEY": (("stages", 1, "env", 0, "value"), SECRET),
}


def every_place(name: str, namespace: str) -> dict:
    """A pipeline with every field a credential could be written into, all clean."""
    manifest = two_stages(name, namespace)
    spec = manifest["spec"]
    spec["stages"][1]["env"] = [{"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "k"}}}]
    spec["stages"] += [
        {"name": "hub", "type": "sft", "model": {"hubId": "org/name"}, "data": {"path": "data/sft.jsonl"}},
        {"name": "rl", "type": "rlhf", "from": "sft", "data": {"path": "data/prompts.jsonl"},
         "rl": {"rewards": [{"python": {"path": "rewards/r.py", "function": "score"}}]}},
        {"name": "ev", "type": "eval", "eval": {"models": ["sft"], "generate": {"path": "data/held-out.jsonl"}}},
    ]
    spec["export"] = {"stage": "sft", "to": "s3://bucket/export/"}
    spec["env"] = [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}}}]
    return manifest


def put(manifest: dict, path: tuple, value: str) -> dict:
    out = copy.deepcopy(manifest)
    node = out["spec"]
    for part in path[:-1]:
        node = node[part]
    if path[-1] == "value":
        node.pop("valueFrom")
    node[path[-1]] = value
    return out


async def test_a_credential_in_the_spec_is_refused_without_being_echoed(admin, namespace):
    base = every_place("clean", namespace)
    answers = {}
    for place, (path, value) in REFUSED_PLACES.items():
        manifest = put(base, path, value)
        manifest["metadata"]["name"] = "planted"
        with pytest.raises(ApiException) as refused:
            await create_pipeline(admin, manifest)
        answers[place] = (refused.value.status, refused.value.body)
    for place, (status, body) in answers.items():
        assert status == 422 and "must not" in body and "secretKeyRef" in body, (place, body)
        assert SECRET not in body, f"{place}: the API server's answer repeats the secret"
    assert await get_pipeline(admin, namespace, "planted") is None


async def test_secrets_a_pipeline_names_are_nowhere_in_what_was_written(admin, kubectl, namespace, node, chart_operator):
    kubectl.run("create", "secret", "generic", "hub", "-n", namespace, f"--from-literal=token={SECRET}")
    kubectl.run("create", "secret", "generic", "s3", "-n", namespace, f"--from-literal=AWS_SECRET_ACCESS_KEY={ENV_SECRET}",
                f"--from-literal=k={ENV_SECRET}")
    manifest = two_stages("p", namespace)
    spec = manifest["spec"]
    spec["env"] = [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}}}]
    spec["envFrom"] = [{"secretRef": {"name": "s3"}}]
    # A secret volume, named but not mounted: the test node maps mount paths of the YAML it hands a
    # pod into its own folder under /tmp, which the stage config then refuses as the operator's.
    spec["volumes"] = [{"name": "creds", "secret": {"secretName": "hub"}}]
    operator = chart_operator(namespace)
    operator.start()
    await asyncio.to_thread(operator.wait_live)
    await create_pipeline(admin, manifest)
    status = await wait_until(lambda: finished(admin, namespace, "p"), 120, "the pipeline to finish")
    assert status["phase"] == "Succeeded", [p.log[-2000:] for p in node.pods.values()]
    # The pods did receive the secrets (the test node resolves secretKeyRef as a kubelet does).
    pods = [p for p in node.pods.values() if p.name.startswith("p-")]
    assert pods
    searched: dict[str, str] = {"pipeline (spec and status)": json.dumps(await get_pipeline(admin, namespace, "p"))}
    for kind in ("configmaps", "pods", "services", "events"):
        listing = await admin.request("GET", Resource("", "v1", kind).path(namespace))
        searched.update({f"{kind}/{o['metadata']['name']}": json.dumps(o) for o in listing["items"]})
    jobs = await admin.request("GET", Resource("batch", "v1", "jobs").path(namespace))
    searched.update({f"jobs/{o['metadata']['name']}": json.dumps(o) for o in jobs["items"]})
    searched["operator log"] = operator.log.read_text(errors="replace")
    searched.update({f"log of pod {p.name}": p.log for p in pods})
    volume = node.claim_dir(namespace, "training-data")
    searched.update({f"volume file {f.relative_to(volume)}": f.read_text(errors="replace")
                     for f in volume.rglob("*") if f.is_file() and f.stat().st_size < 10_000_000})
    leaked = [where for where, text in searched.items() if SECRET in text or ENV_SECRET in text]
    assert not leaked, leaked
    kinds = {where.split("/")[0].split(" ")[0] for where in searched}
    assert {"configmaps", "jobs", "pods", "events", "operator", "log", "volume"} <= kinds, sorted(searched)
    print(f"searched {len(searched)} places, all clean:", *sorted(searched), sep="\n  ")
