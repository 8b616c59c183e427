"""kopf glue: every handler delegates to `reconcile.reconcile` (the one use-case).

Run it with `refinery operator [--namespace NS]` (which calls `run_operator`; the image's entrypoint).
`kopf run -m refinery_operator.handlers` works for all namespaces only: kopf does not tell the
handlers its `--namespace`, so they would list cluster-wide (see `fill_child_cache`).

How a pipeline is driven:
- A daemon per pipeline runs `reconcile` whenever it is woken, and at least every RESYNC_S
  seconds as a backstop (level-based: every pass recomputes everything from observation).
- Jobs and progress ConfigMaps are listed once at start-up and then watched, into a cache of
  slim copies by pipeline (children.py); any event on one that carries our labels also wakes its
  pipeline's daemon. A reconcile reads its children from that cache, so a checkpoint a pod
  reports reaches `.status` after one watch event plus one status patch.
- A retry back-off or a start deadline shortens that sleep (`Outcome.requeue_after`); a new
  `refinery.dev/rerun-from` annotation wakes the daemon too.
- After each reconcile the pipeline's metrics are recorded; they are forgotten when its daemon
  stops. `/metrics` is served on `$REFINERY_METRICS_PORT` (default 8000; `0` turns it off).
- Creation, resumption and spec changes run `reconcile` directly, so an invalid spec becomes
  `kopf.PermanentError` (logged once, never retried) plus the status Failed/InvalidSpec.
- Reconciles of the same pipeline are serialised by a per-pipeline lock, and each starts from
  the status the previous one wrote (a watched body may lag behind our own last patch). Over
  all pipelines at most RECONCILES_AT_ONCE run at a time.
- Status patches are conditional on the pipeline's resourceVersion (optimistic concurrency): a
  pass whose object changed meanwhile gets 409 and is run again from a fresh read
  (`reconcile_current`). While the watched body still shows the version our last patch started
  from, the pass uses the version that patch returned, so our own writes cost no conflict.

kopf's own bookkeeping goes to annotations (`AnnotationsProgressStorage`,
`AnnotationsDiffBaseStorage`), never into `.status`, which our schema types strictly. Daemons
need a finalizer (kopf stops them before the object goes); ours is named `refinery.dev/...`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

import kopf
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from . import builders, metrics
from refinery.api.v1alpha1 import GROUP, PLURAL, VERSION
from .children import ChildCache
from refinery.core.reruns import RERUN_ANNOTATION
from .k8s import CONFIGMAPS, JOBS, PODS, Cluster
from .reconcile import Outcome, reconcile_current

RESYNC_S = 30.0  # backstop: a pipeline is reconciled at least this often
CACHE_RESYNC_S = 300.0  # the watch cache is re-listed this often (deletions a restarted watch missed)
RETRY_S = 2.0  # after an API error
# Reconciles in flight at once, over all pipelines. Each holds its parsed pipeline and the objects
# it builds while it waits for the API; a thousand pipelines arriving together (a cold start)
# would otherwise hold a thousand of them at once. The API calls themselves run on a handful of
# worker threads (asyncio.to_thread), so more would not make them faster.
RECONCILES_AT_ONCE = 16
ANNOTATION_PREFIX = "refinery.dev"
API_ERRORS = (ApiException, urllib3.exceptions.HTTPError)
OWNED = {builders.LABEL_PIPELINE: kopf.PRESENT}
PROGRESS_MAPS = {**OWNED, builders.LABEL_COMPONENT: builders.COMPONENT_PROGRESS}
STAGE_PODS = {**OWNED, builders.LABEL_COMPONENT: builders.COMPONENT_STAGE}
METRICS_PORT = 8000  # the chart's Service and ServiceMonitor scrape this port
log = logging.getLogger(__name__)
_metrics_served: list[int] = []  # once per process: an operator restarted in-process keeps the server


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/stop-daemon"
    settings.posting.level = logging.WARNING  # Events on the pipeline only for problems
    memo.cluster = memo.get("cluster") or Cluster.from_environment()
    memo.wakeups = collections.defaultdict(asyncio.Event)  # (namespace, name) -> Event
    memo.locks = collections.defaultdict(asyncio.Lock)
    memo.in_flight = asyncio.Semaphore(RECONCILES_AT_ONCE)
    memo.statuses = {}  # (namespace, name, uid) -> the status this operator last wrote
    memo.versions = {}  # (namespace, name, uid) -> (resourceVersion it was computed from, the one it produced)
    memo.ensured = {}  # uid -> generation whose shared objects exist (see reconcile)
    memo.children = ChildCache()  # filled by fill_child_cache, then by the watches (job_changed, progress_changed)
    serve_metrics()


def serve_metrics() -> None:
    if _metrics_served:
        return
    try:
        port = metrics.serve_from_environment(default=METRICS_PORT)
    except OSError as e:  # the port is taken: run without /metrics rather than not at all
        log.warning("cannot serve metrics: %s", e)
        port = None
    _metrics_served.append(port or 0)


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def spec_changed(body: kopf.Body, memo: kopf.Memo, namespace: str, name: str, **_: Any) -> None:
    outcome = await locked_reconcile(memo, body)
    memo.wakeups[namespace, name].set()
    if outcome.invalid:
        raise kopf.PermanentError(f"invalid spec: {outcome.invalid}")


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=5.0)
async def keep_reconciling(body: kopf.Body, memo: kopf.Memo, namespace: str, name: str,
                           logger: logging.Logger, **_: Any) -> None:
    wakeup: asyncio.Event = memo.wakeups[namespace, name]
    try:
        while True:
            wakeup.clear()  # a wake-up during the reconcile below triggers one more pass
            try:
                outcome = await locked_reconcile(memo, body, logger)
            except API_ERRORS as e:
                logger.warning("reconcile failed, retrying in %.0fs: %s", RETRY_S, e)
                await asyncio.sleep(RETRY_S)
                continue
            try:
                await asyncio.wait_for(wakeup.wait(), min(RESYNC_S, outcome.requeue_after or RESYNC_S))
            except TimeoutError:
                pass
    finally:
        metrics.forget_pipeline(namespace, name)
        memo.wakeups.pop((namespace, name), None)
        memo.statuses.pop((namespace, name, body.metadata.uid), None)
        memo.versions.pop((namespace, name, body.metadata.uid), None)
        memo.locks.pop((namespace, name, body.metadata.uid), None)
        memo.ensured.pop(body.metadata.uid, None)


def rerun_requested(body: kopf.Body, **_: Any) -> bool:
    value = (body.metadata.annotations.get(RERUN_ANNOTATION) or "").strip()
    return bool(value) and value != (body.get("status") or {}).get("rerunRequest")


@kopf.on.event(GROUP, VERSION, PLURAL, annotations={RERUN_ANNOTATION: kopf.PRESENT}, when=rerun_requested)
def rerun_annotated(memo: kopf.Memo, namespace: str, name: str, **_: Any) -> None:
    wakeup = memo.wakeups.get((namespace, name))
    if wakeup is not None:
        wakeup.set()


CHILD_KINDS = ("jobs", "progress", "pods")  # children.Kind


async def list_children(memo: kopf.Memo, kind: str) -> list[dict[str, Any]]:
    """Every stage Job or progress ConfigMap the operator watches (its namespace, or all of them).
    Selected by component only (`kopf.PRESENT` is no label value); the cache keeps those with a
    pipeline label."""
    cluster: Cluster = memo.cluster
    found = []
    for namespace in memo.get("namespaces") or [None]:  # None: all namespaces
        if kind == "jobs":
            found += await cluster.list_labelled(JOBS, namespace, {builders.LABEL_COMPONENT: builders.COMPONENT_STAGE})
        elif kind == "pods":
            found += await cluster.list_labelled(PODS, namespace, {builders.LABEL_COMPONENT: builders.COMPONENT_STAGE})
        else:
            found += await cluster.list_labelled(CONFIGMAPS, namespace, {builders.LABEL_COMPONENT: builders.COMPONENT_PROGRESS})
    return found


@kopf.on.startup(backoff=RETRY_S)
async def fill_child_cache(memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """List every stage Job and progress ConfigMap once, before kopf starts watching (children.py),
    then re-list them every CACHE_RESYNC_S. An API error fails this handler, which kopf retries;
    a 403 at cluster scope never heals by itself, so it stops the operator with what to do."""
    try:
        counts = {kind: memo.children.seed(kind, await list_children(memo, kind)) for kind in CHILD_KINDS}
    except ApiException as e:
        if e.status == 403 and not memo.get("namespaces"):
            raise kopf.PermanentError(
                "cannot list stage Jobs and progress ConfigMaps in all namespaces (403 Forbidden). With RBAC for "
                "one namespace (the chart's watchNamespace), start the operator with `refinery operator --namespace NS`; "
                "`kopf run --namespace` does not pass the namespace to the handlers") from e
        raise
    logger.info("cached %d stage Jobs, %d progress ConfigMaps and %d stage pods", counts["jobs"], counts["progress"],
                counts["pods"])
    memo.cache_resync = asyncio.create_task(resync_child_cache(memo))


async def resync_child_cache(memo: kopf.Memo) -> None:
    while True:
        await asyncio.sleep(CACHE_RESYNC_S)
        for kind in CHILD_KINDS:
            started = memo.children.now()
            try:
                memo.children.resync(kind, await list_children(memo, kind), started)
            except API_ERRORS as e:  # the next round tries again; the watches keep the cache meanwhile
                log.warning("could not re-list %s for the cache: %s", kind, e)
            except Exception:  # noqa: BLE001 - a background loop: log it and keep the next rounds
                log.exception("re-listing %s for the cache failed", kind)


@kopf.on.event("batch", "v1", "jobs", labels=OWNED)
def job_changed(type: str | None, body: kopf.Body, labels: kopf.Labels, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    memo.children.seen("jobs", type, body)
    wake(memo, namespace, labels)  # a prune Job too: the pipeline may be waiting on it


@kopf.on.event("", "v1", "pods", labels=STAGE_PODS)
def pod_changed(type: str | None, body: kopf.Body, labels: kopf.Labels, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    """Stage pods: a deletion, eviction or lost node is seen on them first (disruptions.py)."""
    memo.children.seen("pods", type, body)
    wake(memo, namespace, labels)


@kopf.on.event("", "v1", "configmaps", labels=PROGRESS_MAPS)
def progress_changed(type: str | None, body: kopf.Body, labels: kopf.Labels, namespace: str, memo: kopf.Memo,
                     **_: Any) -> None:
    memo.children.seen("progress", type, body)
    wake(memo, namespace, labels)


def wake(memo: kopf.Memo, namespace: str, labels: kopf.Labels) -> None:
    wakeup = memo.wakeups.get((namespace, labels[builders.LABEL_PIPELINE]))
    if wakeup is not None:  # no daemon: the pipeline is gone or not yet seen
        wakeup.set()


async def locked_reconcile(memo: kopf.Memo, body: kopf.Body, logger: logging.Logger | None = None) -> Outcome:
    key = (body.metadata.namespace, body.metadata.name, body.metadata.uid)
    async with memo.locks[key], memo.in_flight:
        outcome = await reconcile_current(memo.cluster, body, memo.children, last_status=memo.statuses.get(key),
                                          ensured=memo.ensured, resource_version=known_version(memo, key, body))
        memo.statuses[key] = outcome.status
        if outcome.status_patched:
            memo.versions[key] = (outcome.read_version, outcome.resource_version)
    if outcome.pipeline is not None:
        metrics.record_pipeline(key[0], key[1], outcome.typed_status, outcome.pipeline.spec)
    if logger is not None and outcome.launched:
        logger.info("started %s", ", ".join(outcome.launched))
    return outcome


def known_version(memo: kopf.Memo, key: tuple[str, str, str], body: kopf.Body) -> str | None:
    """The resourceVersion a pass on `body` computes its status against: the body's own, unless
    the body is still the one our last status patch started from — then the version that patch
    produced (the watch has not delivered our own write yet; the server did accept it)."""
    seen = (body.get("metadata") or {}).get("resourceVersion")
    read, written = memo.versions.get(key, (None, None))
    return written if seen is not None and seen == read and written else seen


@kopf.on.cleanup()
def close(memo: kopf.Memo, **_: Any) -> None:
    if memo.get("cache_resync") is not None:
        memo.cache_resync.cancel()
    if memo.get("cluster") is not None:
        memo.cluster.close()


def run_operator(namespaces: list[str] | None = None, *, liveness_endpoint: str | None = None,
                 verbose: bool = False) -> None:
    """Run the operator until interrupted: cluster-wide, or only in `namespaces`.

    The namespaces go to kopf and, through the memo, to `list_children`: with RBAC for one
    namespace (the chart's `watchNamespace`) every list must stay in it. Standalone (no kopf
    peering): run one replica; the Deployment's `Recreate` strategy keeps two from overlapping
    during a rollout.
    """
    kopf.configure(verbose=verbose)
    namespaces = list(namespaces or [])
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        memo=kopf.Memo(namespaces=namespaces),  # what fill_child_cache lists (empty: all namespaces)
        settings=scanning_settings(namespaces),
        standalone=True,
        liveness_endpoint=liveness_endpoint,
    )


def scanning_settings(namespaces: list[str]) -> kopf.OperatorSettings:
    """kopf's scanning, off for exact namespace names.

    To match namespace patterns kopf lists namespaces at cluster scope; the chart's Role in one
    namespace refuses that, and kopf retries 9 times (about a minute, logging errors) before it
    falls back to the names given — a minute in which no pipeline is served. Exact names need no
    scan. The price: the CRDs are discovered once, at start-up (a CRD installed later is served
    after a restart); the chart installs the CRD before the operator's Deployment.
    """
    settings = kopf.OperatorSettings()
    settings.scanning.disabled = bool(namespaces) and not any(set(ns) & set("*?!,") for ns in namespaces)
    return settings
