"""Was an attempt disrupted, that is ended from outside the trainer? Judged from all its pods (pure).

A disruption is not a failure: a pod deleted (`kubectl delete pod`, a drain), evicted through the
Eviction API, preempted, killed with its node, or sent SIGTERM — and every rank of the same
attempt that failed because a peer went away (a gloo/NCCL "connection reset"). None of that is
the user's fault, so it never spends `retries.application`. It has its own budget,
`retries.disruption`, and spends it only when disruptions come in a row without a newer
checkpoint: one after which the stage's newest checkpoint is newer than at the previous one starts
the count again (count_disruption). Its own budget rather than the infrastructure one: on spot
capacity reclaims are routine and a long stage meets many, each costing only the work since its
checkpoint; the stage worth stopping is the one that never gets past its checkpoint.

Why the attempt as a whole and not the pod the Job controller saw fail first: with N ranks,
deleting rank 1 makes rank 0's collective fail with exit 1 a few seconds later, and whichever
pod's failure reaches the Job controller first decides its `Failed` condition. So the operator
looks at every pod of the attempt while it runs (it watches stage pods, children.py) and writes
the first disruption it sees onto the Job (`refinery.dev/disruption-*` annotations, see
disruptions.py) *before* the Job fails; `reconcile.attempt_state` then reads the Job's failure as
that disruption whatever exit code came first. Deleted pods vanish within a second of ending, so
the verdict is recorded when seen, not reconstructed later.

What counts, per pod (the first that matches, most specific first):
- its node is lost (Ready False or Unknown: the node lifecycle controller's verdict) -> NodeLost;
- a `DisruptionTarget` condition (eviction, preemption, taint manager, pod GC, kubelet) -> by reason;
- a deletion requested before the Job started to end -> PodDeleted;
- exit code 143 (the trainer honoured SIGTERM) before the Job started to end -> Terminated.
Deletions and SIGTERMs that the Job controller sends itself — after the Job's `FailureTarget` or
`Failed`, or while it is suspended (our `spec.suspend`, or Kueue) — are its way of ending the
attempt, not a cause; so are those of a Job the operator ended or is deleting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..api.run import ProgressRecord
from ..api.v1alpha1 import Failure, Stage, StageStatus
from .accounting import parse_time

if TYPE_CHECKING:  # plan imports this module
    from .plan import AttemptState

REASON_NODE_LOST = "NodeLost"
REASON_EVICTED = "Evicted"
REASON_PREEMPTED = "Preempted"
REASON_POD_DELETED = "PodDeleted"
REASON_TERMINATED = "Terminated"
REASON_DISRUPTED = "Disrupted"  # a DisruptionTarget of a kind not named below
REASON_DISRUPTED_WITHOUT_PROGRESS = "DisruptedWithoutProgress"  # retries.disruption spent: no newer checkpoint
EXIT_SIGTERM = 143
# DisruptionTarget reasons Kubernetes sets (k8s.io/api/core/v1 PodReason*), in our words.
TARGET_REASONS = {
    "EvictionByEvictionAPI": REASON_EVICTED,
    "TerminationByKubelet": REASON_EVICTED,  # node-pressure eviction, graceful node shutdown
    "PreemptionByScheduler": REASON_PREEMPTED,
    "DeletionByTaintManager": REASON_NODE_LOST,  # NoExecute taint: unreachable/not-ready (or an admin's taint)
    "DeletionByPodGC": REASON_NODE_LOST,  # its Node object was deleted
    REASON_NODE_LOST: REASON_NODE_LOST,  # ours (disruptions.end_pods_on_lost_nodes)
}


@dataclass(frozen=True)
class Disruption:
    reason: str
    message: str
    node: str | None = None


def lost_node_problem(node: Mapping[str, Any] | None) -> str | None:
    """Why a node counts as lost (its Ready condition False or Unknown, or no Node at all), or None."""
    if node is None:
        return "its Node object is gone"
    ready = next((c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is None or ready.get("status") == "True":
        return None
    state = "NotReady" if ready.get("status") == "False" else "unreachable (Ready Unknown)"
    return f"{state} since {ready.get('lastTransitionTime')}: {ready.get('message') or ready.get('reason') or ''}".strip()


def job_ending_time(job: Mapping[str, Any]) -> datetime | None:
    """When the Job controller began ending the attempt itself (FailureTarget, Failed, Suspended)."""
    times = [parse_time(c.get("lastTransitionTime")) for c in (job.get("status") or {}).get("conditions") or []
             if c.get("type") in ("FailureTarget", "Failed", "Suspended") and c.get("status") == "True"]
    return min((t for t in times if t), default=None)


def is_terminal(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def deletion_requested(pod: Mapping[str, Any]) -> datetime | None:
    """When the pod's deletion was asked for: its deletionTimestamp is that plus the grace period."""
    meta = pod.get("metadata") or {}
    at = parse_time(meta.get("deletionTimestamp"))
    return at - timedelta(seconds=meta.get("deletionGracePeriodSeconds") or 0) if at else None


def sigterm_exit(pod: Mapping[str, Any]) -> datetime | None:
    """When a container of the pod ended with exit code 143 (SIGTERM honoured), if one did."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        ended = (status.get("state") or {}).get("terminated") or {}
        if ended.get("exitCode") == EXIT_SIGTERM:
            return parse_time(ended.get("finishedAt"))
    return None


def classify_pod(pod: Mapping[str, Any], lost: Mapping[str, str], ending: datetime | None) -> Disruption | None:
    name = (pod.get("metadata") or {}).get("name", "?")
    node = (pod.get("spec") or {}).get("nodeName")
    if node in lost:
        return Disruption(REASON_NODE_LOST, f"node {node} was lost while pod {name} ran on it ({lost[node]})", node)
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "DisruptionTarget" and c.get("status") == "True":
            reason = TARGET_REASONS.get(c.get("reason") or "", REASON_DISRUPTED)
            return Disruption(reason, f"pod {name} on node {node}: {c.get('reason')}: {c.get('message') or ''}".rstrip(": "),
                              node)

    def before_ending(at: datetime | None) -> bool:
        # Equal seconds are the Job controller's own deletions: condition times have 1 s resolution.
        return at is not None and (ending is None or at.replace(tzinfo=None) < ending.replace(tzinfo=None))

    if before_ending(deletion_requested(pod)):
        return Disruption(REASON_POD_DELETED, f"pod {name} on node {node} was deleted while it ran (kubectl delete, "
                          "a drain or a controller)", node)
    if before_ending(sigterm_exit(pod)):
        return Disruption(REASON_TERMINATED, f"pod {name} on node {node} was stopped by SIGTERM (exit 143)", node)
    return None


def classify_attempt(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]],
                     lost: Mapping[str, str]) -> Disruption | None:
    """The disruption that ends (or ended) this stage Job's attempt, or None.

    `pods`: every pod of the Job the operator sees; `lost`: lost node name -> why. None for a Job
    that succeeded, is being deleted, was ended by the operator (annotations of reconcile.py), or
    is suspended: its pods' SIGTERMs are the suspension's."""
    meta = job.get("metadata") or {}
    status = job.get("status") or {}
    conditions = {c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"}
    if "Complete" in conditions or meta.get("deletionTimestamp") or (job.get("spec") or {}).get("suspend"):
        return None
    if any(k.startswith("refinery.dev/stop-") for k in meta.get("annotations") or {}):
        return None
    ending = job_ending_time(job)
    found = [d for pod in pods if (d := classify_pod(pod, lost, ending)) is not None]
    order = [REASON_NODE_LOST, REASON_PREEMPTED, REASON_EVICTED, REASON_DISRUPTED, REASON_POD_DELETED, REASON_TERMINATED]
    return min(found, key=lambda d: order.index(d.reason), default=None)


# ----------------------------------------------------------------------------------------------
# what a disruption spends (core/plan.py)


def sigterm_as_disruption(attempt: "AttemptState", record: ProgressRecord | None, stage: Stage) -> "AttemptState":
    """A failed single-pod attempt whose trainer reported stopping on SIGTERM (exit 143, after a
    checkpoint) was stopped from outside, even when its pod was gone before the operator saw it (it
    was down): a disruption. Our own suspensions never fail a Job, and a Job the operator ends is
    infrastructure already. Not with several pods: when another rank fails, the Job controller
    itself sends rank 0 (the one that reports) SIGTERM; there the pods decide (core/disruption.py)."""
    if stage.resources.nodes > 1 or attempt.disruption or attempt.infrastructure or record is None \
            or record.attempt != attempt.attempt:
        return attempt
    if record.phase == "Failed" and record.failure_reason == REASON_TERMINATED:
        return replace(attempt, disruption=True, reason=REASON_TERMINATED, message=record.message or attempt.message)
    return attempt


def count_disruption(status: StageStatus, failed: "AttemptState") -> None:
    """On first seeing a failure: count a disruption in a row unless the stage checkpointed past the
    step it stood at when the previous one was counted (status.lastCheckpoint is folded already)."""
    if not failed.disruption:
        return
    step = status.last_checkpoint.step if status.last_checkpoint else -1
    progressed = status.disruption_checkpoint_step is None or step > status.disruption_checkpoint_step
    status.disruptions_in_a_row = 1 if progressed or not status.disruptions_in_a_row else status.disruptions_in_a_row + 1
    status.disruption_checkpoint_step = step


def disrupted_without_progress(stage: Stage, status: StageStatus) -> Failure:
    last = status.last_failure
    step = status.disruption_checkpoint_step
    since = f"since its newest checkpoint (step {step}) was written" if step is not None and step >= 0 else \
        "without writing a checkpoint"
    n = status.disruptions_in_a_row
    return Failure(class_="Disruption", reason=REASON_DISRUPTED_WITHOUT_PROGRESS, attempt=last.attempt if last else None,
                   node=last.node if last else None,
                   message=f"disrupted {n} times in a row {since}: {n - 1} retries made no progress (retries.disruption: "
                           f"{stage.retries.disruption}); the last: {last.reason if last else ''}: {last.message if last else ''}")
