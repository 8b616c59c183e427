"""What the operator knows of each pipeline's stage Jobs, pods and progress ConfigMaps, without asking.

A reconcile reads a pipeline's children from memory, not from the API. `ChildCache` holds a slim
copy of every stage Job and progress ConfigMap by (namespace, pipeline), filled once by a list
at start-up and kept current by the watches the operator keeps on Jobs and ConfigMaps anyway.
This is the informer-cache pattern of controller-runtime (reads from the watch cache, writes to
the API server): with 200 pipelines reporting checkpoints, each reconcile costs one status patch
instead of two list calls and a patch.

Why the cache is safe to decide from:
- Warm start: the start-up list runs before kopf starts any watch, so a restarted operator never
  plans from an empty cache (which would make it re-create every running attempt's Job: a 409
  each, harmless, but a thousand of them).
- Lag: a watch event can arrive after the reconcile that caused it. Every decision plan() takes
  from a lagging view is one it takes again, idempotently: Job names are deterministic, so
  launching an attempt twice is a 409 and a read, never a second Job; suspending, resuming or
  failing a Job twice is the same patch twice. Events arrive in order, and the status keeps its
  own running totals, so nothing the cache shows makes the status go backwards.
- Read-your-writes: a Job this operator created is remembered (`expect`) until the watch shows
  it, so the next pass does not try to create it again.
- Missed deletions: a watch that starts over re-lists without DELETED events for what went
  meanwhile, so the cache is re-listed every few minutes (`resync`), as informers do.
- Nothing to forget: a deleted pipeline's children are garbage-collected, and their DELETED
  events empty the cache (a daemon that stops and restarts loses nothing).
- No phantoms: an entry no watch event has confirmed — a created Job, or one from the start-up
  list that was deleted before the watch began — is dropped after UNCONFIRMED_S. A missing entry
  costs at most one idempotent create; a phantom one could hold a stage forever.

Why not kopf's own indexes (`@kopf.index`): kopf holds every object's processing until all
indexes are filled, and the bookkeeping for that wakes every waiting object on each new one —
quadratic in the number of objects. With 1,000 pipelines (4,000 objects; benchmarks/
operator_scale.py), a restarted operator took 84 s to reconcile them all with kopf indexes, and
8 s with this cache.

Only what `reconcile.attempt_state`, `reconcile.progress_record` and `core.disruption` read is
kept: a Job's pod template, the bulk of it, is not. Stage pods are cached so that a disruption
(a deleted or evicted pod, a lost node) is seen while the pod still exists: a deleted pod leaves
the API within a second of ending, before the Job it fails is read (core/disruption.py).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from . import builders

UNCONFIRMED_S = 60.0  # an entry no watch event confirmed is dropped after this long

Kind = Literal["jobs", "progress", "pods"]
Key = tuple[str, str]  # (namespace, pipeline name)


class Children(Protocol):
    """A pipeline's children as `reconcile` reads them (a test passes its own)."""

    def jobs(self, namespace: str, pipeline: str) -> list[Mapping[str, Any]]: ...
    def progress(self, namespace: str, pipeline: str) -> list[Mapping[str, Any]]: ...
    def expect(self, job: Mapping[str, Any]) -> None: ...
    def pods(self, namespace: str, pipeline: str) -> list[Mapping[str, Any]]: ...


def job_view(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a Job that say how its attempt is doing (see reconcile.attempt_state)."""
    meta = body.get("metadata") or {}
    return {
        "metadata": {k: copy.deepcopy(meta[k]) for k in ("name", "namespace", "labels", "annotations", "deletionTimestamp")
                     if meta.get(k)},
        # parallelism: a multi-node attempt has started only when all its pods are ready (StartTimeout)
        "spec": {"suspend": bool((body.get("spec") or {}).get("suspend")),
                 "parallelism": (body.get("spec") or {}).get("parallelism")},
        "status": copy.deepcopy(dict(body.get("status") or {})),
    }


def progress_view(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a progress ConfigMap that say what its stage reported."""
    meta = body.get("metadata") or {}
    return {
        "metadata": {k: copy.deepcopy(meta[k]) for k in ("name", "namespace", "labels") if meta.get(k)},
        "data": dict(body.get("data") or {}),
    }


def pod_view(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a stage pod that say whether it was disrupted (core/disruption.py)."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    return {
        "metadata": {k: copy.deepcopy(meta[k]) for k in ("name", "namespace", "labels", "deletionTimestamp",
                                                          "deletionGracePeriodSeconds") if meta.get(k) is not None},
        "spec": {"nodeName": (body.get("spec") or {}).get("nodeName")},
        "status": {"phase": status.get("phase"), "conditions": copy.deepcopy(status.get("conditions") or []),
                   "containerStatuses": [{"state": copy.deepcopy(c.get("state") or {})}
                                         for c in status.get("containerStatuses") or []]},
    }


VIEWS: dict[Kind, Callable[[Mapping[str, Any]], dict[str, Any]]] = {"jobs": job_view, "progress": progress_view,
                                                                     "pods": pod_view}
COMPONENTS: dict[Kind, str] = {"jobs": builders.COMPONENT_STAGE, "progress": builders.COMPONENT_PROGRESS,
                               "pods": builders.COMPONENT_STAGE}


@dataclass
class Entry:
    view: dict[str, Any]
    confirmed: bool  # a watch event showed this state
    since: float  # when it was stored (monotonic)


class ChildCache:
    """Every pipeline's stage Jobs and progress ConfigMaps, as last listed, watched or created."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[Kind, dict[Key, dict[str, Entry]]] = {"jobs": {}, "progress": {}, "pods": {}}
        # When each object's DELETED event came, until the next resync: a list requested before
        # a deletion may still show the object, and must not bring it back.
        self._deleted: dict[Kind, dict[tuple[Key, str], float]] = {"jobs": {}, "progress": {}, "pods": {}}

    # ---- reading (reconcile) -------------------------------------------------------------------

    def jobs(self, namespace: str, pipeline: str) -> list[Mapping[str, Any]]:
        return self._read("jobs", (namespace, pipeline))

    def progress(self, namespace: str, pipeline: str) -> list[Mapping[str, Any]]:
        return self._read("progress", (namespace, pipeline))

    def pods(self, namespace: str, pipeline: str) -> list[Mapping[str, Any]]:
        return self._read("pods", (namespace, pipeline))

    def _read(self, kind: Kind, key: Key) -> list[Mapping[str, Any]]:
        entries = self._entries[kind].get(key)
        if not entries:
            return []
        now = self._clock()
        for name in [n for n, e in entries.items() if not e.confirmed and now - e.since > UNCONFIRMED_S]:
            del entries[name]  # never shown by a watch: deleted unseen, or the watch is far behind
        return [e.view for e in entries.values()]

    # ---- writing (start-up list, watch events, own creates) ------------------------------------

    def now(self) -> float:
        return self._clock()

    def seed(self, kind: Kind, bodies: Iterable[Mapping[str, Any]]) -> int:
        """Objects from a list call, before the watches start; how many were ours."""
        count = 0
        for body in bodies:
            if (key := self._key(kind, body)) is not None:
                self._store(kind, key, body, confirmed=False)
                count += 1
        return count

    def resync(self, kind: Kind, bodies: Iterable[Mapping[str, Any]], started: float) -> None:
        """A full list, requested at `started` (this cache's clock), corrects what the watch missed.

        A watch that has to start over (its resourceVersion expired) re-lists without telling of
        the objects deleted meanwhile; without this, such a Job would stay in the cache for good.
        Entries stored after `started` are newer than the list and stay as they are.
        """
        listed: dict[Key, dict[str, Mapping[str, Any]]] = {}
        for body in bodies:
            if (key := self._key(kind, body)) is not None:
                listed.setdefault(key, {})[body["metadata"]["name"]] = body
        for key in list(self._entries[kind]):
            entries = self._entries[kind][key]
            for name in [n for n, e in entries.items() if e.since < started and n not in listed.get(key, {})]:
                del entries[name]
            if not entries:
                del self._entries[kind][key]
        deleted = self._deleted[kind]
        for key, bodies_by_name in listed.items():
            for name, body in bodies_by_name.items():
                current = (self._entries[kind].get(key) or {}).get(name)
                if deleted.get((key, name), -1.0) >= started:
                    continue  # deleted after the list was requested: the list is the older news
                if current is None or current.since < started:
                    self._store(kind, key, body, confirmed=True)
        self._deleted[kind] = {k: t for k, t in deleted.items() if t >= started}  # older ones the list covers

    def seen(self, kind: Kind, event_type: str | None, body: Mapping[str, Any]) -> bool:
        """A watch event (ADDED, MODIFIED, DELETED, or None while kopf lists); True if ours."""
        key = self._key(kind, body)
        if key is None:
            return False
        if event_type == "DELETED":
            name = (body.get("metadata") or {}).get("name")
            entries = self._entries[kind].get(key) or {}
            entries.pop(name, None)
            if not entries:
                self._entries[kind].pop(key, None)
            self._deleted[kind][key, name] = self._clock()
        else:
            self._store(kind, key, body, confirmed=True)
        return True

    def expect(self, job: Mapping[str, Any]) -> None:
        """A Job this operator created (or found existing): known before its watch event arrives."""
        key = self._key("jobs", job)
        name = (job.get("metadata") or {}).get("name")
        current = (self._entries["jobs"].get(key) or {}).get(name) if key else None
        if key is not None and (current is None or not current.confirmed):  # never over what a watch showed
            self._store("jobs", key, job, confirmed=False)

    def _store(self, kind: Kind, key: Key, body: Mapping[str, Any], confirmed: bool) -> None:
        name = body["metadata"]["name"]
        self._entries[kind].setdefault(key, {})[name] = Entry(VIEWS[kind](body), confirmed, self._clock())

    @staticmethod
    def _key(kind: Kind, body: Mapping[str, Any]) -> Key | None:
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        pipeline = labels.get(builders.LABEL_PIPELINE)
        if not pipeline or labels.get(builders.LABEL_COMPONENT) != COMPONENTS[kind] or not meta.get("namespace"):
            return None
        return meta["namespace"], pipeline
