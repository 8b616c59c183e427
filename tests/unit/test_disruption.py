"""A disruption is not a failure: what counts as one (core/disruption.py), how it is recorded on
the Job before the Job fails (disruptions.py), how a failed Job is read (reconcile.attempt_state),
and what it spends (core/plan.py: `retries.disruption`, in a row without a newer checkpoint)."""

from __future__ import annotations

import asyncio

import pytest

from refinery.api.run import ProgressRecord
from refinery.api.v1alpha1 import Checkpoint
from refinery.core.conditions import get_condition
from refinery.core.disruption import classify_attempt, lost_node_problem
from refinery_operator.disruptions import ANNOTATION_DISRUPTION_REASON, note_disruptions
from refinery_operator.reconcile import attempt_state
from tests.unit.planning import NOW, failed, run, single, stamp

T0, T1, T2 = "2026-01-02T03:00:00Z", "2026-01-02T03:00:05Z", "2026-01-02T03:00:10Z"
LOST = {"node-b": "unreachable (Ready Unknown) since ...: Kubelet stopped posting node status."}


def job(*conditions, suspend=False, annotations=None, name="p-sft-1"):
    return {"metadata": {"name": name, "labels": {"refinery.dev/stage": "sft", "refinery.dev/attempt": "1"},
                         "annotations": annotations or {}},
            "spec": {"suspend": suspend},
            "status": {"conditions": [{"type": t, "status": "True", "lastTransitionTime": at, "reason": r}
                                      for t, at, r in conditions]}}


def pod(name="p-sft-1-0", node="node-a", phase="Running", deleted=None, grace=30, exit_code=None, finished=None,
        target=None, ready=True):
    meta = {"name": name, "labels": {"refinery.dev/stage": "sft", "refinery.dev/attempt": "1"}}
    if deleted:
        meta.update(deletionTimestamp=deleted, deletionGracePeriodSeconds=grace)
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if target:
        conditions.append({"type": "DisruptionTarget", "status": "True", "reason": target, "message": "..."})
    state = {"terminated": {"exitCode": exit_code, "finishedAt": finished}} if exit_code is not None else {"running": {}}
    return {"metadata": meta, "spec": {"nodeName": node},
            "status": {"phase": phase, "conditions": conditions, "containerStatuses": [{"state": state}]}}


# Deleted at T0 - 30 s + 30 s grace = asked for at T0 - 30 s... written as deletionTimestamp = request + grace.
ASKED_T0 = "2026-01-02T03:00:30Z"  # deletionTimestamp of a deletion asked for at T0 with 30 s of grace


@pytest.mark.parametrize(("the_job", "pods", "lost", "reason"), [
    # kubectl delete pod of a single-node attempt: it runs on; later it fails (exit 143)
    (job(), [pod(deleted=ASKED_T0)], {}, "PodDeleted"),
    (job(("FailureTarget", T1, "BackoffLimitExceeded")), [pod(deleted=ASKED_T0, phase="Failed", exit_code=143, finished=T0)], {}, "PodDeleted"),
    # multi-node: rank 1 deleted, then rank 0's collective failed (exit 1) and the Job began to fail
    (job(("FailureTarget", T1, "BackoffLimitExceeded")),
     [pod(phase="Failed", exit_code=1, finished=T1), pod("p-sft-1-1", deleted=ASKED_T0, node="node-b")], {}, "PodDeleted"),
    # ... but a rank failing on its own: the Job controller deletes the other one after FailureTarget
    (job(("FailureTarget", T0, "BackoffLimitExceeded")),
     [pod(phase="Failed", exit_code=1, finished=T0), pod("p-sft-1-1", deleted=ASKED_T0, node="node-b")], {}, None),
    (job(("FailureTarget", T0, "BackoffLimitExceeded")),
     [pod(phase="Failed", exit_code=1, finished=T0), pod("p-sft-1-1", phase="Failed", exit_code=143, finished=T1)], {}, None),
    # SIGTERM from outside without a deletion we saw (e.g. the kubelet's graceful shutdown)
    (job(("FailureTarget", T1, "BackoffLimitExceeded")), [pod(phase="Failed", exit_code=143, finished=T0)], {}, "Terminated"),
    (job(), [pod(deleted=ASKED_T0, target="EvictionByEvictionAPI")], {}, "Evicted"),
    (job(), [pod(target="PreemptionByScheduler")], {}, "Preempted"),
    (job(), [pod(target="DeletionByTaintManager", node="node-b")], {}, "NodeLost"),
    # node lost beats the survivor's exit code, whichever came first
    (job(("FailureTarget", T0, "BackoffLimitExceeded")),
     [pod(phase="Failed", exit_code=1, finished=T0), pod("p-sft-1-1", node="node-b", ready=False)], LOST, "NodeLost"),
    # our own suspension, a Job we ended or delete, a Job that succeeded: not disruptions
    (job(suspend=True), [pod(deleted=ASKED_T0)], {}, None),
    (job(("Suspended", T0, "JobSuspended")), [pod(phase="Failed", exit_code=143, finished=T1)], {}, None),
    (job(annotations={"refinery.dev/stop-reason": "StartTimeout"}), [pod(deleted=ASKED_T0)], {}, None),
    (job(("Complete", T2, "")), [pod(phase="Succeeded")], {}, None),
    (job(), [pod()], {}, None),
    (job(("FailureTarget", T0, "BackoffLimitExceeded")), [pod(phase="Failed", exit_code=1, finished=T0)], {}, None),
])
def test_an_attempt_is_classified_as_a_whole(the_job, pods, lost, reason):
    found = classify_attempt(the_job, pods, lost)
    assert (found.reason if found else None) == reason


def test_a_lost_node_is_one_the_node_lifecycle_controller_gave_up_on():
    def node(status):
        return {"status": {"conditions": [{"type": "Ready", "status": status, "lastTransitionTime": T0,
                                           "message": "Kubelet stopped posting node status."}]}}
    assert lost_node_problem(node("True")) is None
    assert "unreachable" in lost_node_problem(node("Unknown")) and "NotReady" in lost_node_problem(node("False"))
    assert lost_node_problem(None) == "its Node object is gone"


def failed_job(annotations):
    j = job(("Failed", T1, "BackoffLimitExceeded"), annotations=annotations)
    j["status"]["conditions"][0]["message"] = "Job has reached the specified backoff limit"
    return j


def test_a_failed_job_with_a_recorded_disruption_is_a_disruption_whatever_exit_code_came_first():
    state = attempt_state(failed_job({ANNOTATION_DISRUPTION_REASON: "NodeLost", "refinery.dev/disruption-message": "node b lost",
                                      "refinery.dev/disruption-node": "node-b"}))
    assert (state.disruption, state.infrastructure, state.reason, state.node) == (True, False, "NodeLost", "node-b")
    plain = attempt_state(failed_job({}))
    assert (plain.disruption, plain.reason) == (False, "TrainerError")


class FakeCluster:
    """Records what disruptions.py asks of the API; the Job read fresh is `fresh`."""

    def __init__(self, fresh, nodes=None):
        self.fresh, self.nodes, self.calls = fresh, nodes or {}, []

    async def get(self, resource, namespace, name):
        self.calls.append(("get", resource.plural, name))
        return self.fresh

    async def get_node(self, name):
        self.calls.append(("get_node", name))
        return self.nodes.get(name, {"status": {"conditions": [{"type": "Ready", "status": "True"}]}})

    async def patch(self, resource, namespace, name, patch):
        self.calls.append(("patch", resource.plural, name, patch))
        return {}

    async def patch_pod_status(self, namespace, name, status):
        self.calls.append(("patch_pod_status", name, status))
        return True


def note(cluster, jobs, pods):
    return asyncio.run(note_disruptions(cluster, "ns", "p", jobs, pods, NOW))


def test_a_deleted_pod_is_recorded_on_its_job_once_the_job_read_afresh_agrees():
    cluster = FakeCluster(fresh=job())
    (annotated,) = note(cluster, [job()], [pod(deleted=ASKED_T0)])
    assert annotated["metadata"]["annotations"][ANNOTATION_DISRUPTION_REASON] == "PodDeleted"
    assert [c[0] for c in cluster.calls] == ["get_node", "get", "patch"]  # its node is fine: not NodeLost
    # The cached Job lagged: read afresh it is suspended (our spec.suspend): not a disruption.
    lagging = FakeCluster(fresh=job(suspend=True))
    (unchanged,) = note(lagging, [job()], [pod(deleted=ASKED_T0)])
    assert ANNOTATION_DISRUPTION_REASON not in unchanged["metadata"]["annotations"]
    assert [c[0] for c in lagging.calls] == ["get_node", "get"]
    # Recorded once: a Job with a verdict is not looked at again.
    done = FakeCluster(fresh=None)
    note(done, [annotated], [pod(deleted=ASKED_T0)])
    assert done.calls == []


def test_a_pod_on_a_lost_node_is_marked_failed_so_the_job_fails_now():
    node_b = {"status": {"conditions": [{"type": "Ready", "status": "Unknown", "lastTransitionTime": T0}]}}
    cluster = FakeCluster(fresh=None, nodes={"node-a": {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                                             "node-b": node_b})
    survivor, stranded = pod(ready=True), pod("p-sft-1-1", node="node-b", ready=False)
    (annotated,) = note(cluster, [job()], [survivor, stranded])
    annotations = annotated["metadata"]["annotations"]
    assert (annotations[ANNOTATION_DISRUPTION_REASON], annotations["refinery.dev/disruption-node"]) == ("NodeLost", "node-b")
    (marked,) = [c for c in cluster.calls if c[0] == "patch_pod_status"]
    assert marked[1] == "p-sft-1-1" and marked[2]["phase"] == "Failed"
    assert marked[2]["conditions"][0]["type"] == "DisruptionTarget"  # podFailurePolicy rule 0: FailJob at once
    assert ("get_node", "node-a") not in cluster.calls  # a ready pod's node is not read


# ------------------------------------------------------------------------------------------------
# what a disruption spends


def disrupted(attempt, seconds=0.0, reason="PodDeleted"):
    return failed(attempt, seconds, reason=reason, disruption=True)


def record(attempt, step):
    return ProgressRecord(attempt=attempt, phase="Failed", step=step,
                          last_checkpoint=Checkpoint(step=step, path=f"/c/{step}", time=stamp(-1)))


def test_disruptions_spend_no_application_budget_and_are_retried_at_once():
    pipeline = single(retries={"application": 0, "infrastructure": 0, "backoffSeconds": 600})
    result = run(pipeline, {"pretrain": [disrupted(1)]}, {"pretrain": record(1, 10)})
    stage = result.status.stage("pretrain")
    assert [l.attempt for l in result.launches] == [2]  # now: no back-off
    assert (stage.last_failure.class_, stage.last_failure.reason) == ("Disruption", "PodDeleted")
    assert stage.restarts_by_class.model_dump() == {"application": 0, "infrastructure": 0, "disruption": 1}


def test_a_trainer_that_reported_stopping_on_sigterm_was_disrupted_even_unseen():
    pipeline = single(retries={"application": 0, "backoffSeconds": 0})
    sigterm = ProgressRecord(attempt=1, phase="Failed", failure_reason="Terminated",
                             message="stage 'pretrain' stopped by SIGTERM after a checkpoint at step 927")
    result = run(pipeline, {"pretrain": [failed(1)]}, {"pretrain": sigterm})
    assert [l.attempt for l in result.launches] == [2]
    assert result.status.stage("pretrain").last_failure.class_ == "Disruption"
    assert result.status.stage("pretrain").restarts_by_class.disruption == 1
    # Several ranks: rank 0 (the one that reports) gets SIGTERM from the Job controller when another
    # rank fails, so its report proves nothing; the pods decide (the annotation), here none: the trainer's.
    multi = single(retries={"application": 0, "backoffSeconds": 0}, resources={"nodes": 2, "gpus": 0})
    result = run(multi, {"pretrain": [failed(1)]}, {"pretrain": sigterm})
    assert result.launches == () and result.status.stage("pretrain").last_failure.class_ == "Application"


def test_disruptions_without_a_newer_checkpoint_end_the_stage_with_a_reason_that_says_so():
    pipeline = single(retries={"disruption": 2, "backoffSeconds": 0})
    status, attempts = None, []
    steps = [10, 20, 20, 20, 20]  # progress until attempt 2, then none
    for n, step in enumerate(steps, start=1):
        attempts.append(disrupted(n, reason="NodeLost"))
        result = run(pipeline, {"pretrain": list(attempts)}, {"pretrain": record(n, step)}, status=status)
        status = result.status
        stage = status.stage("pretrain")
        if status.phase == "Failed":
            break
        assert [l.attempt for l in result.launches] == [n + 1]
    # attempt 2 wrote step 20, then attempts 3 and 4 (the 2 retries allowed) got no further
    assert n == 4 and stage.disruptions_in_a_row == 3
    assert stage.last_failure.reason == "DisruptedWithoutProgress"
    assert "3 times in a row since its newest checkpoint (step 20) was written: 2 retries made no progress" \
        in stage.last_failure.message
    assert "disrupted 3 times in a row" in get_condition(status.conditions, "Failed").message
    assert stage.restarts_by_class.disruption == 3 and stage.restarts_by_class.application == 0
