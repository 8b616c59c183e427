"""Why an attempt's pods never started, in the words of the scheduler and the kubelet (pure).

A `StartTimeout` (core/plan.py) alone says only that some pod was not ready in time; the user
then has to find the pod and `kubectl describe` it. The scheduler has already said why on the
pod — its `PodScheduled` condition is False with reason `Unschedulable` and a message such as
"0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules" — and the kubelet
says it on the container's waiting state (`ErrImageNeverPull`, `ImagePullBackOff` with the
image). The operator caches its stage pods with both (children.pod_view), so when it ends an
attempt as `StartTimeout` it adds what they said to the message (reconcile.py):

    start_problems([pending_rank_2])
    # ['pod p-s-1-2-x (rank 2): Unschedulable: 0/2 nodes are available: 2 node(s) didn't match ...']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

INDEX_LABEL = "batch.kubernetes.io/job-completion-index"  # an Indexed Job's pod: its rank
MAX_WORDS = 300  # characters kept of one pod's reason: a status message, not a log


def pod_problem(pod: Mapping[str, Any]) -> str | None:
    """What keeps this pod from being ready, as Kubernetes said it; None for a ready or finished pod."""
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return None
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    if (conditions.get("Ready") or {}).get("status") == "True":
        return None
    scheduled = conditions.get("PodScheduled") or {}
    if scheduled.get("status") == "False":
        said = f"{scheduled.get('reason') or 'NotScheduled'}: {scheduled.get('message') or 'not scheduled'}"
    elif waiting := next((s["state"]["waiting"] for s in status.get("containerStatuses") or []
                          if (s.get("state") or {}).get("waiting", {}).get("reason")), None):
        said = f"{waiting['reason']}: {waiting.get('message') or 'container waiting'}".rstrip(": ")
    elif node := (pod.get("spec") or {}).get("nodeName"):
        said = f"on node {node}, not ready"
    else:
        said = "not scheduled yet"
    meta = pod.get("metadata") or {}
    rank = (meta.get("labels") or {}).get(INDEX_LABEL)
    name = meta.get("name", "?") + (f" (rank {rank})" if rank is not None else "")
    said = said if len(said) <= MAX_WORDS else said[:MAX_WORDS - 3] + "..."
    return f"pod {name}: {said}"


def start_problems(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each unready pod's problem, pods that cannot be placed first (the likeliest cause), by name."""
    found = [(p, problem) for p in pods if (problem := pod_problem(p)) is not None]
    found.sort(key=lambda item: ("Unschedulable" not in item[1] and "not scheduled" not in item[1],
                                 (item[0].get("metadata") or {}).get("name", "")))
    return [problem for _, problem in found]


def explain_start_timeout(message: str, pods: Sequence[Mapping[str, Any]]) -> str:
    """`message` with what the attempt's pods said, when they said anything."""
    problems = start_problems(pods)
    return f"{message} — {'; '.join(problems)}" if problems else message
