"""The operator's cache of stage Jobs and progress ConfigMaps (refinery_operator/children.py)."""

from __future__ import annotations

from refinery_operator.children import UNCONFIRMED_S, ChildCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def job(name: str, pipeline: str = "p", component: str = "stage", **status) -> dict:
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": "ns", "labels": {
            "refinery.dev/pipeline": pipeline, "app.kubernetes.io/component": component,
            "refinery.dev/stage": "sft", "refinery.dev/attempt": name[-1]}},
        "spec": {"suspend": False, "template": {"spec": {"containers": [{"name": "trainer", "image": "x"}]}}},
        "status": status,
    }


def progress(pipeline: str, text: str) -> dict:
    return {"metadata": {"name": f"{pipeline}-sft-progress", "namespace": "ns", "labels": {
        "refinery.dev/pipeline": pipeline, "app.kubernetes.io/component": "progress", "refinery.dev/stage": "sft"}},
        "data": {"progress.json": text}}


def names(views) -> list[str]:
    return sorted(v["metadata"]["name"] for v in views)


def test_children_are_kept_by_pipeline_and_slimmed():
    cache = ChildCache()
    assert cache.seen("jobs", "ADDED", job("p-sft-1", active=1))
    assert cache.seen("jobs", None, job("q-sft-1", pipeline="q"))  # kopf's initial listing: no type
    assert cache.seen("progress", "MODIFIED", progress("p", '{"step": 3}'))
    assert names(cache.jobs("ns", "p")) == ["p-sft-1"]
    assert names(cache.jobs("ns", "q")) == ["q-sft-1"]
    assert cache.jobs("other", "p") == []
    (view,) = cache.jobs("ns", "p")
    # no pod template; parallelism: whether every rank has started (reconcile.all_pods_started)
    assert view["status"] == {"active": 1} and view["spec"] == {"suspend": False, "parallelism": None}
    assert cache.progress("ns", "p")[0]["data"] == {"progress.json": '{"step": 3}'}


def test_objects_that_are_not_a_pipelines_children_are_ignored():
    cache = ChildCache()
    assert not cache.seen("jobs", "ADDED", job("p-sft-prune", component="cleanup"))
    unlabelled = job("x-1")
    del unlabelled["metadata"]["labels"]["refinery.dev/pipeline"]
    assert not cache.seen("jobs", "ADDED", unlabelled)
    assert cache.jobs("ns", "p") == []


def test_a_watch_event_replaces_the_entry_and_a_deletion_removes_it():
    cache = ChildCache()
    cache.seen("jobs", "ADDED", job("p-sft-1"))
    cache.seen("jobs", "MODIFIED", job("p-sft-1", failed=1))
    assert cache.jobs("ns", "p")[0]["status"] == {"failed": 1}
    cache.seen("jobs", "DELETED", job("p-sft-1", failed=1))
    assert cache.jobs("ns", "p") == []


def test_a_created_job_is_seen_before_its_watch_event_but_never_over_it():
    cache = ChildCache()
    cache.expect(job("p-sft-2"))
    assert names(cache.jobs("ns", "p")) == ["p-sft-2"]
    cache.seen("jobs", "MODIFIED", job("p-sft-2", active=1))
    cache.expect(job("p-sft-2"))  # the create's (older) answer, handled after the watch event
    assert cache.jobs("ns", "p")[0]["status"] == {"active": 1}


def test_an_entry_no_watch_confirms_is_dropped_but_a_confirmed_one_stays():
    clock = Clock()
    cache = ChildCache(clock=clock)
    assert cache.seed("jobs", [job("p-sft-1"), job("p-sft-prune", component="cleanup")]) == 1
    cache.expect(job("p-sft-2"))
    cache.seen("jobs", None, job("p-sft-3"))
    clock.now += UNCONFIRMED_S - 1
    assert names(cache.jobs("ns", "p")) == ["p-sft-1", "p-sft-2", "p-sft-3"]
    cache.seen("jobs", None, job("p-sft-1"))  # the watch's own listing confirms the start-up list
    clock.now += 2
    # p-sft-2 was never shown by a watch (deleted before its event): a phantom would hold the stage.
    assert names(cache.jobs("ns", "p")) == ["p-sft-1", "p-sft-3"]


def test_a_resync_drops_what_the_watch_missed_and_keeps_what_is_newer():
    clock = Clock()
    cache = ChildCache(clock=clock)
    cache.seen("jobs", "ADDED", job("p-sft-1", active=1))
    cache.seen("jobs", "ADDED", job("p-sft-2"))  # deleted while the watch was down: no DELETED event
    clock.now += 10
    started = clock.now  # the list is requested here ...
    clock.now += 1
    cache.seen("jobs", "ADDED", job("p-sft-3"))  # ... and this one arrived by watch while it ran
    cache.resync("jobs", [job("p-sft-1", succeeded=1), job("q-sft-1", pipeline="q")], started)
    assert names(cache.jobs("ns", "p")) == ["p-sft-1", "p-sft-3"]
    assert cache.jobs("ns", "p")[0]["status"] == {"succeeded": 1}  # the listed state replaces the older one
    assert names(cache.jobs("ns", "q")) == ["q-sft-1"]
    clock.now += UNCONFIRMED_S + 1
    assert names(cache.jobs("ns", "q")) == ["q-sft-1"]  # listed: it exists, no watch needed to confirm it


def test_a_resync_does_not_bring_back_what_was_deleted_after_the_list_was_requested():
    clock = Clock()
    cache = ChildCache(clock=clock)
    cache.seen("jobs", "ADDED", job("p-sft-1"))
    started = clock.now
    clock.now += 1
    cache.seen("jobs", "DELETED", job("p-sft-1"))  # the list's answer, still showing it, comes after
    cache.resync("jobs", [job("p-sft-1")], started)
    assert cache.jobs("ns", "p") == []
    clock.now += 1
    cache.resync("jobs", [job("p-sft-1")], clock.now)  # a later list that shows it: it is back
    assert names(cache.jobs("ns", "p")) == ["p-sft-1"]


def test_stage_pods_are_kept_with_what_tells_a_disruption_and_forgotten_when_deleted():
    cache = ChildCache()
    pod = {"kind": "Pod", "metadata": {"name": "p-sft-1-abc", "namespace": "ns", "deletionTimestamp": "t",
                                       "deletionGracePeriodSeconds": 30, "labels": job("p-sft-1")["metadata"]["labels"]},
           "spec": {"nodeName": "n1", "containers": [{"name": "trainer", "image": "x", "env": [{"name": "A"}]}]},
           "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
                      "containerStatuses": [{"name": "trainer", "image": "x", "state": {"running": {}}}]}}
    assert cache.seen("pods", "MODIFIED", pod)
    (view,) = cache.pods("ns", "p")
    assert view == {"metadata": {"name": "p-sft-1-abc", "namespace": "ns", "labels": pod["metadata"]["labels"],
                                 "deletionTimestamp": "t", "deletionGracePeriodSeconds": 30},
                    "spec": {"nodeName": "n1"},
                    "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
                               "containerStatuses": [{"state": {"running": {}}}]}}
    assert cache.seen("pods", "DELETED", pod) and cache.pods("ns", "p") == []
