"""Record disruptions on stage Jobs while their pods still show them, and end pods on lost nodes.

Called by every reconcile before it plans (core/disruption.py says what counts and why):

1. For each stage Job that has not succeeded and carries no verdict yet, its pods (from the
   watch cache) and the nodes of those that stopped being ready (read by name) are classified;
   a disruption is written onto the Job as `refinery.dev/disruption-{reason,message,node}`.
   `reconcile.attempt_state` reads a failed Job with these as a `Disruption`, whatever exit code
   the Job controller saw first. A deletion or SIGTERM is checked once more against the Job read
   fresh from the API: the watch of Jobs may lag the watch of pods, and the Job controller's own
   deletions (after `FailureTarget`, or a suspension) must not count.
2. Node lost. Nothing in Kubernetes ends a pod whose kubelet is gone: the taint manager evicts it
   after its `tolerationSeconds` (300 s by default), the pod then stays `Terminating` for ever, and
   a Job with a podFailurePolicy counts a pod as failed only once it is terminal — so the attempt
   hangs until someone deletes the Node. The operator does what the pod garbage collector does
   for a node marked out-of-service: it sets the pod's phase to `Failed` with a
   `DisruptionTarget` condition (reason `NodeLost`). The Job controller then fails the Job at once
   (podFailurePolicy rule 0), counts the pod gone, and the next attempt starts on the nodes that
   are left. It acts as soon as the node lifecycle controller marks the node NotReady/Unknown
   (`--node-monitor-grace-period`, 50 s by default): a node that only missed a few heartbeats is
   not lost. Chosen over short tolerations (the taint manager's deletion still leaves the pod
   Terminating) and over the Job's `FailureTarget` alone (a single-node attempt on a dead node
   never gets one). If the node comes back, its kubelet finds the pod terminal and stops it; the
   next attempt writes under its own `attempt-<n>/` folder meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from . import builders
from refinery.core.conditions import rfc3339
from refinery.core.disruption import (
    REASON_NODE_LOST, REASON_POD_DELETED, REASON_TERMINATED, classify_attempt, is_terminal, lost_node_problem,
)
from .k8s import JOBS, Cluster

log = logging.getLogger(__name__)

ANNOTATION_DISRUPTION_REASON = "refinery.dev/disruption-reason"
ANNOTATION_DISRUPTION_MESSAGE = "refinery.dev/disruption-message"
ANNOTATION_DISRUPTION_NODE = "refinery.dev/disruption-node"


def pods_of(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    labels = (job.get("metadata") or {}).get("labels") or {}
    key = (labels.get(builders.LABEL_STAGE), labels.get(builders.LABEL_ATTEMPT))
    return [p for p in pods if (((p.get("metadata") or {}).get("labels") or {}).get(builders.LABEL_STAGE),
                                ((p.get("metadata") or {}).get("labels") or {}).get(builders.LABEL_ATTEMPT)) == key]


def is_unready(pod: Mapping[str, Any]) -> bool:
    """A scheduled, unfinished pod that is not ready (the node lifecycle controller marks every pod of
    a NotReady node so) or is being deleted: worth asking whether its node is lost."""
    if is_terminal(pod) or not (pod.get("spec") or {}).get("nodeName"):
        return False
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in (pod.get("status") or {}).get("conditions") or [])
    return not ready or bool((pod.get("metadata") or {}).get("deletionTimestamp"))


async def lost_nodes(cluster: Cluster, pods: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Node name -> why it is lost, for the nodes of the pods that stopped being ready."""
    lost: dict[str, str] = {}
    for name in sorted({p["spec"]["nodeName"] for p in pods if is_unready(p)}):
        if (problem := lost_node_problem(await cluster.get_node(name))) is not None:
            lost[name] = problem
    return lost


async def note_disruptions(cluster: Cluster, namespace: str, pipeline: str, jobs: Sequence[Mapping[str, Any]],
                           pods: Sequence[Mapping[str, Any]], now) -> list[Mapping[str, Any]]:
    """The stage Jobs, with the disruption verdicts recorded by this call added to their annotations."""
    result = []
    for job in jobs:
        annotations = (job.get("metadata") or {}).get("annotations") or {}
        mine = pods_of(job, pods)
        if ANNOTATION_DISRUPTION_REASON in annotations or not mine:
            if annotations.get(ANNOTATION_DISRUPTION_REASON) == REASON_NODE_LOST and any(is_unready(p) for p in mine):
                await end_pods_on_lost_nodes(cluster, namespace, mine, await lost_nodes(cluster, mine), now)  # a retry
            result.append(job)
            continue
        lost = await lost_nodes(cluster, mine)
        found = classify_attempt(job, mine, lost)
        if found is not None and found.reason in (REASON_POD_DELETED, REASON_TERMINATED):
            fresh = await cluster.get(JOBS, namespace, job["metadata"]["name"])
            found = classify_attempt(fresh, mine, lost) if fresh is not None else None
        if found is None:
            result.append(job)
            continue
        verdict = {ANNOTATION_DISRUPTION_REASON: found.reason, ANNOTATION_DISRUPTION_MESSAGE: found.message,
                   ANNOTATION_DISRUPTION_NODE: found.node or ""}
        log.info("%s/%s: attempt of Job %s disrupted: %s", namespace, pipeline, job["metadata"]["name"], found.message)
        await cluster.patch(JOBS, namespace, job["metadata"]["name"], {"metadata": {"annotations": verdict}})
        if found.reason == REASON_NODE_LOST:
            await end_pods_on_lost_nodes(cluster, namespace, mine, lost, now)
        meta = {**job["metadata"], "annotations": {**annotations, **verdict}}
        result.append({**job, "metadata": meta})
    return result


async def end_pods_on_lost_nodes(cluster: Cluster, namespace: str, pods: Sequence[Mapping[str, Any]],
                                 lost: Mapping[str, str], now) -> None:
    """Mark the attempt's unfinished pods on lost nodes Failed, as the pod GC does (see the module doc)."""
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if node not in lost or is_terminal(pod):
            continue
        condition = {"type": "DisruptionTarget", "status": "True", "reason": REASON_NODE_LOST,
                     "message": f"Refinery: node {node} was lost ({lost[node]}); the stage resumes on another node",
                     "lastTransitionTime": rfc3339(now)}
        await cluster.patch_pod_status(namespace, pod["metadata"]["name"], {"phase": "Failed", "conditions": [condition]})

