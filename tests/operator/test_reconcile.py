"""Observation (Jobs and progress ConfigMaps -> plan inputs) and spec errors, without an API."""

from __future__ import annotations

import json

import pytest

from refinery_operator.children import job_view
from refinery_operator.k8s import merge_patch
from refinery_operator.reconcile import attempt_state, describe_validation_error, parse_pipeline, progress_record
from tests.builders import chat_pipeline


def job(attempt=1, **status):
    return {"metadata": {"labels": {"refinery.dev/attempt": str(attempt)}}, "status": status}


def cond(type_, reason=None, message=None):
    return {"type": type_, "status": "True", "reason": reason, "message": message, "lastTransitionTime": "2026-01-01T00:00:00Z"}


def kind_of(state) -> str | bool:
    return "Disruption" if state.disruption else state.infrastructure


@pytest.mark.parametrize(("obj", "phase", "infrastructure", "reason"), [
    (job(), "Pending", False, None),
    (job(active=1, startTime="t"), "Running", False, None),
    (job(succeeded=1, conditions=[cond("SuccessCriteriaMet"), cond("Complete")]), "Succeeded", False, None),
    (job(failed=1, conditions=[cond("FailureTarget", "BackoffLimitExceeded"), cond("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")]),
     "Failed", False, "TrainerError"),
    (job(failed=1, conditions=[cond("Failed", "PodFailurePolicy", "Pod ns/p has condition DisruptionTarget matching FailJob rule at index 0")]),
     "Failed", "Disruption", "Disrupted"),
    (job(failed=1, conditions=[cond("Failed", "PodFailurePolicy", "Container trainer for pod ns/p failed with exit code 137 matching FailJob rule at index 1")]),
     "Failed", True, "OOMKilled"),
    (job(failed=1, conditions=[cond("Failed", "PodFailurePolicy", "... matching FailJob rule at index 9")]), "Failed", False, "TrainerError"),
    (job(failed=1, conditions=[cond("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")]), "Failed", True, "DeadlineExceeded"),
])
def test_attempt_state_from_job(obj, phase, infrastructure, reason):
    state = attempt_state(obj)
    assert (state.phase, kind_of(state), state.reason) == (phase, infrastructure, reason)


def test_attempt_number_comes_from_the_label():
    assert attempt_state(job(attempt=3)).attempt == 3


@pytest.mark.parametrize(("data", "step"), [
    ({}, None),
    ({"progress.json": ""}, None),
    ({"progress.json": "{not json"}, None),
    ({"progress.json": json.dumps({"phase": "Bogus"})}, None),
    ({"progress.json": json.dumps({"step": 7, "maxSteps": 10, "progress": 0.7})}, 7),
])
def test_progress_record_from_configmap(data, step):
    record = progress_record({"metadata": {"name": "p-s-progress"}, "data": data})
    assert (record.step if record else None) == step


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda m: m["spec"]["stages"][1].update({"from": "nope"}), "spec.stages[1].from: no stage named 'nope'"),
    (lambda m: m["spec"]["stages"][0].update({"training": {"maxSteps": 0}}), "spec.stages[0].training.maxSteps: Input should be greater than or equal to 1"),
    (lambda m: m["spec"]["stages"][0].update({"bogus": 1}), "spec.stages[0].bogus: unknown field (misspelt?)"),
    (lambda m: m["spec"].pop("storage"), "spec.storage: Field required"),
])
def test_invalid_spec_message_names_the_field(edit, expected):
    manifest = chat_pipeline("p").manifest()
    edit(manifest)
    with pytest.raises(Exception) as error:
        parse_pipeline(manifest)
    assert expected in describe_validation_error(error.value)


@pytest.mark.parametrize(("old", "new", "patch"), [
    ({}, {}, {}),
    ({"a": 1}, {"a": 1}, {}),
    ({"a": 1}, {"a": 2}, {"a": 2}),
    ({"a": 1, "b": 2}, {"a": 1}, {"b": None}),
    ({"s": {"x": 1, "y": 2}}, {"s": {"x": 1}}, {"s": {"y": None}}),
    ({"l": [1, 2]}, {"l": [1]}, {"l": [1]}),
])
def test_merge_patch(old, new, patch):
    assert merge_patch(old, new) == patch


@pytest.mark.parametrize(("obj", "expected"), [
    # pods still terminating after the Failed condition (clusters before 1.31): not gone yet
    (job(failed=1, terminating=1, conditions=[cond("Failed", "BackoffLimitExceeded", "x")]), dict(pods_gone=False)),
    (job(failed=1, conditions=[cond("Failed", "BackoffLimitExceeded", "x")]), dict(pods_gone=True)),
    (job(active=1, ready=1, startTime="t"), dict(ready=True, pods_gone=False)),
    (job(active=1, startTime="t"), dict(ready=False)),  # pulling its image, or unschedulable
    ({**job(), "spec": {"suspend": True}}, dict(suspended=True, phase="Pending")),
    # resumed by us, not yet by the Job controller (it resets startTime with JobResumed): still suspended
    ({**job(startTime="t", conditions=[cond("Suspended", "JobSuspended")]), "spec": {"suspend": False}},
     dict(suspended=True)),
    ({"metadata": {"labels": {"refinery.dev/attempt": "1"}, "annotations": {"refinery.dev/held-seconds": "120.5"}},
      "status": {"active": 1}}, dict(held_seconds=120.5, suspended=False)),
    ({"metadata": {"annotations": {"refinery.dev/held-seconds": "soon"}}, "status": {}}, dict(held_seconds=0.0)),
    ({"metadata": {"labels": {"refinery.dev/attempt": "1"}, "deletionTimestamp": "t"}, "status": {"active": 1}},
     dict(deleting=True, pods_gone=False)),
])
def test_attempt_state_reads_pods_suspension_and_deletion(obj, expected):
    state = attempt_state(obj)
    assert {k: getattr(state, k) for k in expected} == expected


@pytest.mark.parametrize(("reason", "infrastructure", "superseded"), [("StartTimeout", True, False), ("Superseded", False, True)])
def test_a_job_the_operator_ended_says_why(reason, infrastructure, superseded):
    obj = job(failed=1, conditions=[cond("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")])
    obj["metadata"]["annotations"] = {"refinery.dev/stop-reason": reason, "refinery.dev/stop-message": "no pod was ready"}
    state = attempt_state(obj)
    assert (state.reason, state.message, state.infrastructure, state.superseded) == (reason, "no pod was ready", infrastructure, superseded)


@pytest.mark.parametrize(("reason", "words"), [
    ("Disrupted", "evicted, preempted or lost its node"),
    ("OOMKilled", "raise resources.memory"),
    ("TrainerError", "`kubectl logs job/p-s-1` shows why"),
])
def test_failure_messages_say_what_to_do(reason, words):
    from refinery_operator.reconcile import failure_message

    assert words in failure_message(reason, "p-s-1", "Job has reached the specified backoff limit")


class InMemoryCluster:
    """Just enough of k8s.Cluster for reconcile(): objects by (kind, name), creates counted."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict] = {}
        self.creates: list[tuple[str, str]] = []

    async def create_if_absent(self, obj):
        key = (obj["kind"], obj["metadata"]["name"])
        self.creates.append(key)
        created = key not in self.objects
        self.objects.setdefault(key, dict(obj))
        return self.objects[key], created

    async def patch_status(self, namespace, name, old, new, resource_version=None):
        return {"status": new} if old != new else None

    async def post_event(self, *args, **kwargs):
        return None

    async def patch(self, *args, **kwargs):
        return None

    async def delete(self, *args, **kwargs):
        return False

    async def get(self, *args, **kwargs):
        return None


class ClusterChildren:
    """`children.Children` read straight from the InMemoryCluster (no watch lag)."""

    def __init__(self, cluster: InMemoryCluster) -> None:
        self.cluster = cluster

    def _of(self, pipeline, component):
        return [o for o in self.cluster.objects.values()
                if (o["metadata"].get("labels") or {}).get("refinery.dev/pipeline") == pipeline
                and o["metadata"]["labels"].get("app.kubernetes.io/component") == component]

    def jobs(self, namespace, pipeline):
        return [o for o in self._of(pipeline, "stage") if o["kind"] == "Job"]

    def progress(self, namespace, pipeline):
        return self._of(pipeline, "progress")

    def pods(self, namespace, pipeline):
        return [o for o in self._of(pipeline, "stage") if o["kind"] == "Pod"]

    def expect(self, job):
        pass


async def test_shared_objects_are_created_once_per_generation():
    from refinery_operator.reconcile import reconcile

    body = chat_pipeline("p").manifest()
    body["metadata"].update(uid="u1", generation=1)
    cluster, ensured = InMemoryCluster(), {}
    children = ClusterChildren(cluster)
    first = await reconcile(cluster, body, children, ensured=ensured)
    assert first.launched == ["p-sources-1-fetch"]  # the inputs check, before any stage
    shared = {k for k in cluster.creates if k[0] in ("ServiceAccount", "Role", "RoleBinding")}
    assert len(shared) == 3

    complete(cluster, "p-sources-1-fetch")
    checked = await reconcile(cluster, body, children, last_status=first.status, ensured=ensured)
    assert checked.launched == ["p-pretrain-1"]
    complete(cluster, "p-pretrain-1")
    cluster.creates.clear()
    second = await reconcile(cluster, body, children, last_status=checked.status, ensured=ensured)
    assert second.launched == ["p-sft-1"]
    assert {k[0] for k in cluster.creates} == {"ConfigMap", "Job"}  # only the attempt's own objects


def complete(cluster, job: str) -> None:
    cluster.objects[("Job", job)]["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}


def inputs_checked(status) -> tuple:
    c = next((c for c in status["conditions"] if c["type"] == "InputsChecked"), None)
    return c and (c["status"], c["reason"], c.get("observedGeneration"))


async def first_pass(cluster):
    """A generation-1 pipeline 'p' (volume paths only) and its first reconcile on `cluster`."""
    from refinery_operator.reconcile import reconcile

    body = chat_pipeline("p").manifest()
    body["metadata"].update(uid="u1", generation=1)
    children = ClusterChildren(cluster)
    return body, children, await reconcile(cluster, body, children)


def fail_check(cluster, job: str, message: str) -> None:
    """The initializer's result and its Job `job` as a failed check leaves them."""
    import json

    cluster.objects[("ConfigMap", "p-init-sources")]["data"] = {
        "progress.json": json.dumps({"phase": "Failed", "reason": "SourceError", "message": message})}
    cluster.objects[("Job", job)]["status"] = {
        "failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}


async def test_the_inputs_are_checked_once_per_generation_before_a_stage_starts():
    """A pipeline with only volume paths: the initializer Job (annotated with the generation it
    checks) runs before the first stage; its pass is recorded as the InputsChecked condition and
    no later reconcile (retries, later stages, a restarted operator: no `ensured`, no last status
    but the stored one) creates it again; a new generation is checked by a Job of its own."""
    from refinery_operator.reconcile import reconcile

    cluster = InMemoryCluster()
    body, children, out = await first_pass(cluster)
    assert out.launched == ["p-sources-1-fetch"]
    job = cluster.objects[("Job", "p-sources-1-fetch")]
    assert job["metadata"]["annotations"] == {"refinery.dev/generation": "1"}
    assert inputs_checked(out.status) == ("False", "CheckingInputs", 1)
    out = await reconcile(cluster, {**body, "status": out.status}, children)
    assert out.launched == []  # running: nothing more
    complete(cluster, "p-sources-1-fetch")
    out = await reconcile(cluster, {**body, "status": out.status}, children)
    assert out.launched == ["p-pretrain-1"] and inputs_checked(out.status) == ("True", "InputsChecked", 1)

    # A retry or a later stage, even with the Job out of sight (deleted by hand): the condition is the record.
    init = cluster.objects.pop(("Job", "p-sources-1-fetch"))
    complete(cluster, "p-pretrain-1")
    out = await reconcile(cluster, {**body, "status": out.status}, children)
    assert out.launched == ["p-sft-1"]
    cluster.objects[("Job", "p-sources-1-fetch")] = init

    body["metadata"]["generation"] = 2  # the spec changed (new paths, maybe): checked again
    complete(cluster, "p-sft-1")
    out = await reconcile(cluster, {**body, "status": out.status}, children)
    assert out.launched == ["p-sources-2-fetch"] and inputs_checked(out.status) == ("False", "CheckingInputs", 2)
    assert cluster.objects[("Job", "p-sources-2-fetch")]["metadata"]["annotations"] == {"refinery.dev/generation": "2"}
    complete(cluster, "p-sources-2-fetch")
    out = await reconcile(cluster, {**body, "status": out.status}, children)
    assert out.launched == ["p-reward-1"] and inputs_checked(out.status) == ("True", "InputsChecked", 2)


def test_the_export_steps_job_and_progress_are_observed():
    """spec.export runs as a step of its own (PipelineSpec.run_stages): its Job and progress record
    must reach the planner like a stage's, or the pipeline waits on it forever."""
    from refinery.api.run import PROGRESS_FILE
    from refinery_operator.reconcile import observe

    manifest = chat_pipeline().manifest()
    manifest["spec"]["export"] = {"stage": "rlhf", "to": "exports/p"}
    pipeline = parse_pipeline(manifest)
    labels = {"refinery.dev/stage": "export", "refinery.dev/attempt": "1"}
    done = {"metadata": {"name": "p-export-1", "labels": labels},
            "status": {"succeeded": 1, "conditions": [cond("Complete")]}}
    progress = {"metadata": {"name": "p-export-progress", "labels": {"refinery.dev/stage": "export"}},
                "data": {PROGRESS_FILE: json.dumps({"phase": "Succeeded", "attempt": 1})}}
    observed = observe(pipeline, [done], [progress])
    assert [a.attempt for a in observed.attempts["export"]] == [1]
    assert "export" in observed.records


async def test_a_failed_check_fails_the_pipeline_and_a_fixed_spec_is_checked_again():
    """A misspelt path: Failed with the initializer's reason before any stage; the user fixes the
    spec (generation 2): a new check runs, and the first stage starts once it passes."""
    import json

    from refinery_operator.reconcile import reconcile

    cluster = InMemoryCluster()
    body, children, out = await first_pass(cluster)
    assert out.launched == ["p-sources-1-fetch"]
    message = "stage 'rlhf' data.path: /workspace/data/prompt.jsonl: dataset file not found"
    fail_check(cluster, "p-sources-1-fetch", message)
    out = await reconcile(cluster, {**body, "status": out.status}, children)
    assert out.launched == [] and out.status["phase"] == "Failed"
    failed = next(c for c in out.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "SourceError" and failed["message"].endswith(message)
    assert inputs_checked(out.status) == ("False", "SourceError", 1)
    assert not [k for k in cluster.objects if k[0] == "Job" and "sources" not in k[1]]  # no stage Job

    body["metadata"]["generation"] = 2  # the path fixed
    out = await reconcile(cluster, {**body, "status": out.status}, children)
    assert out.launched == ["p-sources-2-fetch"] and inputs_checked(out.status) == ("False", "CheckingInputs", 2)
    cluster.objects[("ConfigMap", "p-init-sources")]["data"] = {"progress.json": json.dumps({"phase": "Succeeded"})}
    complete(cluster, "p-sources-2-fetch")
    out = await reconcile(cluster, {**body, "status": out.status}, children)
    assert out.launched == ["p-pretrain-1"] and out.status["phase"] == "Running"
    assert inputs_checked(out.status) == ("True", "InputsChecked", 2)
    assert next(c for c in out.status["conditions"] if c["type"] == "Failed")["status"] == "False"


async def test_a_failed_recheck_ends_the_stage_still_running():
    """The spec changed mid-run (generation 2) and its inputs check failed while a stage of
    generation 1 was still running — as with two branches of a DAG. The pipeline fails, and the
    running stage's Job is ended (activeDeadlineSeconds 1, with why), not left holding its GPUs."""
    import json

    from refinery_operator.reconcile import reconcile

    class PatchRecording(InMemoryCluster):
        def __init__(self):
            super().__init__()
            self.patches = []

        async def patch(self, resource, namespace, name, patch):
            self.patches.append((name, patch))
            return None

    cluster = PatchRecording()
    body, children, out = await first_pass(cluster)
    complete(cluster, "p-sources-1-fetch")
    out = await reconcile(cluster, {**body, "status": out.status}, children)
    assert out.launched == ["p-pretrain-1"]
    cluster.objects[("Job", "p-pretrain-1")]["status"] = {"active": 1, "ready": 1, "startTime": "2026-01-01T00:00:00Z"}
    out = await reconcile(cluster, {**body, "status": out.status}, children)
    assert next(s for s in out.status["stages"] if s["name"] == "pretrain")["phase"] == "Running"

    body["metadata"]["generation"] = 2
    failed_check = json.loads(json.dumps(cluster.objects[("Job", "p-sources-1-fetch")]))
    failed_check["metadata"].update(name="p-sources-2-fetch", annotations={"refinery.dev/generation": "2"})
    failed_check["metadata"]["labels"]["refinery.dev/attempt"] = "2"
    cluster.objects[("Job", "p-sources-2-fetch")] = failed_check
    message = "stage 'rlhf' data.path: /workspace/data/prompt.jsonl: dataset file not found"
    fail_check(cluster, "p-sources-2-fetch", message)
    out = await reconcile(cluster, {**body, "status": out.status}, children)
    assert out.status["phase"] == "Failed"
    pretrain = next(s for s in out.status["stages"] if s["name"] == "pretrain")
    assert pretrain["phase"] == "Failed" and message in pretrain["message"]
    [(job, patch)] = cluster.patches
    assert job == "p-pretrain-1" and patch["spec"] == {"activeDeadlineSeconds": 1}
    assert patch["metadata"]["annotations"]["refinery.dev/stop-reason"] == "SourceError"


@pytest.mark.parametrize(("parallelism", "status", "started"), [
    (None, {"active": 1, "ready": 1}, True),  # one pod: ready is started
    (None, {"active": 1, "ready": 0}, False),
    (3, {"active": 3, "ready": 2}, False),  # rank 2 Pending (no node left): not started, StartTimeout applies
    (3, {"active": 3, "ready": 3}, True),
    (2, {"active": 1, "ready": 1, "succeeded": 1}, True),  # rank 1 finished first: it had started
])
def test_a_multi_node_attempt_has_started_only_when_every_pod_has(parallelism, status, started):
    obj = job(**status, startTime="2026-01-01T00:00:00Z")
    obj["spec"] = {"parallelism": parallelism} if parallelism else {}
    assert attempt_state(obj).ready is started
    # the operator reads Jobs from its cache's slim view: it must keep what this depends on
    assert attempt_state(job_view(obj)).ready is started


async def test_a_start_timeout_says_what_the_scheduler_said_about_the_rank_that_never_started():
    """A `nodes: 3` stage on two nodes: rank 2's pod is Unschedulable. When its attempt runs out of
    `startTimeoutSeconds`, the Job is ended with the scheduler's message in the StartTimeout's
    words (and so in status.lastFailure and the AttemptFailed Event), not only "not all 3 pods"."""
    from datetime import datetime, timezone

    from refinery_operator.reconcile import reconcile

    class PatchRecording(InMemoryCluster):
        def __init__(self):
            super().__init__()
            self.patches = []

        async def patch(self, resource, namespace, name, patch):
            self.patches.append((name, patch))
            return None

    cluster = PatchRecording()
    body, children, out = await first_pass(cluster)
    body["spec"]["stages"][0]["resources"] = {"gpus": 0, "nodes": 3}
    body["spec"]["stages"][0]["retries"] = {"startTimeoutSeconds": 60}
    complete(cluster, "p-sources-1-fetch")
    out = await reconcile(cluster, {**body, "status": out.status}, children)
    assert out.launched == ["p-pretrain-1"]
    job = cluster.objects[("Job", "p-pretrain-1")]
    job["status"] = {"active": 3, "ready": 2, "startTime": "2026-01-01T00:00:00Z"}
    message = "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules."
    for rank in range(3):
        labels = {**job["metadata"]["labels"], "batch.kubernetes.io/job-completion-index": str(rank)}
        conditions = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}] \
            if rank == 2 else [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}]
        cluster.objects[("Pod", f"p-pretrain-1-{rank}-x")] = {
            "kind": "Pod", "metadata": {"name": f"p-pretrain-1-{rank}-x", "labels": labels},
            "spec": {"nodeName": None if rank == 2 else f"n{rank}"},
            "status": {"phase": "Pending" if rank == 2 else "Running", "conditions": conditions}}
    await reconcile(cluster, {**body, "status": out.status}, children,
                    now=datetime(2026, 1, 1, 0, 2, tzinfo=timezone.utc))
    [(name, patch)] = [(n, p) for n, p in cluster.patches if n == "p-pretrain-1"]
    annotations = patch["metadata"]["annotations"]
    assert annotations["refinery.dev/stop-reason"] == "StartTimeout"
    assert annotations["refinery.dev/stop-message"].startswith("not all 3 pods (one per node) of attempt 1 were ready")
    assert f"pod p-pretrain-1-2-x (rank 2): Unschedulable: {message}" in annotations["refinery.dev/stop-message"]

    # The Job controller deletes the pods; a pass before the Job's Failed condition arrives must not
    # end it again with a message that has lost the pods' words (the real node showed that).
    job["metadata"].setdefault("annotations", {}).update(annotations)
    for rank in range(3):
        del cluster.objects[("Pod", f"p-pretrain-1-{rank}-x")]
    await reconcile(cluster, {**body, "status": out.status}, children,
                    now=datetime(2026, 1, 1, 0, 3, tzinfo=timezone.utc))
    assert [n for n, _ in cluster.patches].count("p-pretrain-1") == 1
