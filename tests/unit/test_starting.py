"""A StartTimeout says why its pods never started, in the scheduler's and the kubelet's words
(core/starting.py), read from the operator's slim cache of stage pods (children.pod_view)."""

from __future__ import annotations

import pytest

from refinery.core.starting import explain_start_timeout, pod_problem, start_problems
from refinery_operator.children import pod_view

UNSCHEDULABLE = ("0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules. preemption: 0/2 nodes "
                 "are available: 2 No preemption victims found for incoming pod.")


def pod(name, rank=None, phase="Pending", node=None, conditions=(), waiting=None):
    labels = {"refinery.dev/stage": "pretrain", "refinery.dev/attempt": "1"}
    if rank is not None:
        labels["batch.kubernetes.io/job-completion-index"] = str(rank)
    statuses = [{"name": "trainer", "image": "x", "state": {"waiting": waiting} if waiting else {"running": {}}}]
    return {"metadata": {"name": name, "labels": labels, "annotations": {"a": "b"}},
            "spec": {"nodeName": node, "containers": [{"name": "trainer"}]},
            "status": {"phase": phase, "conditions": list(conditions), "containerStatuses": statuses}}


def cond(type_, status, reason=None, message=None):
    return {"type": type_, "status": status, "reason": reason, "message": message}


PENDING_RANK_2 = pod("s-1-2-x", rank=2, conditions=[cond("PodScheduled", "False", "Unschedulable", UNSCHEDULABLE)])
READY_RANK_0 = pod("s-1-0-x", rank=0, phase="Running", node="n1",
                   conditions=[cond("PodScheduled", "True"), cond("Ready", "True")])
WAITING_RANK_1 = pod("s-1-1-x", rank=1, phase="Running", node="n2",
                     conditions=[cond("PodScheduled", "True"), cond("Ready", "False", "ContainersNotReady")])
NO_IMAGE = pod("s-1-x", phase="Pending", node="n1", conditions=[cond("PodScheduled", "True")],
               waiting={"reason": "ErrImageNeverPull",
                        "message": 'Container image "trainer:gone" is not present with pull policy of Never'})


@pytest.mark.parametrize(("obj", "words"), [
    (PENDING_RANK_2, f"pod s-1-2-x (rank 2): Unschedulable: {UNSCHEDULABLE}"),
    (READY_RANK_0, None),
    (WAITING_RANK_1, "pod s-1-1-x (rank 1): on node n2, not ready"),
    (NO_IMAGE, 'pod s-1-x: ErrImageNeverPull: Container image "trainer:gone" is not present with pull policy of Never'),
    (pod("s-1-y", phase="Failed"), None),
    (pod("s-1-z"), "pod s-1-z: not scheduled yet"),
])
def test_each_pod_says_what_keeps_it_from_starting(obj, words):
    assert pod_problem(obj) == words
    assert pod_problem(pod_view(obj)) == words  # the operator reads pods from its cache's slim view


def test_the_unschedulable_rank_comes_first_and_the_message_keeps_its_opening():
    pods = [pod_view(p) for p in (WAITING_RANK_1, READY_RANK_0, PENDING_RANK_2)]
    assert [p.split(":")[0] for p in start_problems(pods)] == ["pod s-1-2-x (rank 2)", "pod s-1-1-x (rank 1)"]
    message = explain_start_timeout("not all 3 pods (one per node) of attempt 1 were ready 45s after it started", pods)
    assert message.startswith("not all 3 pods (one per node) of attempt 1 were ready 45s after it started — pod s-1-2-x")
    assert "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules" in message
    assert explain_start_timeout("no pod ...", []) == "no pod ..."
    long = pod("s-1-w", conditions=[cond("PodScheduled", "False", "Unschedulable", "x" * 1000)])
    assert len(pod_problem(long)) < 340 and pod_problem(long).endswith("...")
