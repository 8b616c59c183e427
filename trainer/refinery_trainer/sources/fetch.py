"""`refinery-train fetch --config fetch.json`: fetch every remote source once, then check every input.

    refinery-train fetch --config fetch.json      # a FetchRun (refinery/api/run.py)

Run by the pipeline's initializer Job (and by local mode) before the first stage. For each
distinct remote source of the pipeline: a complete folder (`store.py`) is reused as it is — no
request is made —, else the source is downloaded into a scratch folder, verified, renamed into
place and marked complete. A transient failure (5xx, timeout, refused connection, cut-off body)
is retried here a few times with back-off, then reported as transient so the planner retries
the Job as an infrastructure failure. Then `preflight.py` checks every stage's inputs.

The outcome goes to `<pipeline>/sources/sources.json` (a FetchResult) and to the termination
message. Exit codes: 0 done; 1 a source or input is wrong (reason `SourceError`, `BadData` or
`BadModel`); 2 the config is invalid; 75 a transient failure outlasted the retries.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

from refinery.api.run import FETCH_RESULT_FILE, FetchResult, FetchRun
from refinery.api.sources import (
    SOURCES_DIR, SourceRef, SourceStatus, display_uri, fetched_path, remote_sources, single_file_name, source_dir,
)

from ..checkpoints import atomic_write_text, now_rfc3339
from ..errors import SourceError, StageError
from . import store

EXIT_FAILED = 1
EXIT_INVALID_CONFIG = 2
EXIT_TRANSIENT = 75  # EX_TEMPFAIL: try again later
ATTEMPTS = 3
BACKOFF_S = 1.0
HUB_CACHE_DIR = ".hub-cache"  # under sources/, when HF_HUB_CACHE is not set

log = logging.getLogger(__name__)


def fetch_source(ref: SourceRef, pipeline_root: str, attempts: int = ATTEMPTS, backoff_s: float = BACKOFF_S) -> SourceStatus:
    """The source's complete folder, fetched now unless it already was. Raises SourceError."""
    folder = Path(source_dir(pipeline_root, ref.uri))
    uri = display_uri(ref.uri)
    done = store.complete(folder, uri)
    if done is not None:
        log.info("%s: already fetched (%s, %d files), nothing to download", uri, done.resolved, done.files)
        return done
    for attempt in range(1, attempts + 1):
        try:
            return _fetch(ref, folder, pipeline_root)
        except SourceError as err:
            if not err.transient or attempt == attempts:
                raise
            log.warning("%s (attempt %d of %d); retrying in %.0fs", err, attempt, attempts, backoff_s * 2 ** (attempt - 1))
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _fetch(ref: SourceRef, folder: Path, pipeline_root: str) -> SourceStatus:
    from . import hub, https, s3

    tmp = store.partial_dir(folder)
    started = time.monotonic()
    try:
        if ref.kind == "s3":
            fetched = s3.fetch(ref, tmp)
        elif ref.kind == "https":
            fetched = https.fetch(ref, tmp, single_file_name(ref))
        else:
            fetched = hub.fetch(ref, tmp, Path(pipeline_root) / SOURCES_DIR / HUB_CACHE_DIR)
        status = SourceStatus(
            uri=display_uri(ref.uri), resolved=fetched.resolved, path=fetched_path(pipeline_root, ref),
            bytes=fetched.bytes, files=len(fetched.files), fetched_at=now_rfc3339(),
            duration_seconds=round(time.monotonic() - started, 3),
        )
        store.commit(folder, tmp, status, fetched)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when committed
    log.info("%s: fetched %d files, %d bytes in %.1fs (%s)", status.uri, status.files, status.bytes,
             status.duration_seconds, status.resolved)
    return status


def run_fetch(run: FetchRun) -> FetchResult:
    """Fetch every remote source, then check every stage's inputs. Never raises a StageError."""
    from .preflight import check_pipeline

    sources: list[SourceStatus] = []
    try:
        fetched = {}
        for ref in remote_sources(run.stages):
            sources.append(fetch_source(ref, run.pipeline_root))
            fetched[ref.uri] = fetched_path(run.pipeline_root, ref)
        for line in check_pipeline(run.stages, run.data_root, fetched):
            log.info("checked %s", line)
    except StageError as err:
        return FetchResult(phase="Failed", sources=sources, reason=err.reason, message=err.message[:3000],
                           transient=getattr(err, "transient", False))
    return FetchResult(phase="Succeeded", sources=sources)


def _report(run: FetchRun, result: FetchResult) -> None:
    """Also hand the result to the planner's record (the operator reads a ConfigMap, not the pod)."""
    from ..report import make_sink

    sink = make_sink(run.reporter)
    if sink is None:
        return
    try:
        sink.write(json.dumps(result.dump()))
    except Exception as exc:  # noqa: BLE001 - API errors of any kind: the Job's exit code still tells
        log.warning("cannot write the fetch result to %s: %s", sink, exc)


def main(argv: list[str]) -> int:
    from ..cli import write_termination_message

    parser = argparse.ArgumentParser(prog="refinery-train fetch", description="Fetch a pipeline's sources and check its inputs.")
    parser.add_argument("--config", "-c", required=True, help="FetchRun file (JSON or YAML) written by the planner")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("botocore", "urllib3", "httpx", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        import yaml

        run = FetchRun.model_validate(yaml.safe_load(Path(args.config).read_text()))
    except Exception as exc:  # noqa: BLE001 - unreadable, not YAML, or invalid: all one answer
        print(f"refinery-train fetch: invalid config {args.config}: {exc}", file=sys.stderr)
        return EXIT_INVALID_CONFIG
    result = run_fetch(run)
    out = Path(run.pipeline_root) / SOURCES_DIR / FETCH_RESULT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result.dump(), indent=2) + "\n")
    write_termination_message(json.dumps(result.dump()))
    _report(run, result)
    if result.phase == "Succeeded":
        return 0
    print(f"refinery-train fetch: {result.reason}: {result.message}", file=sys.stderr)
    return EXIT_TRANSIENT if result.transient else EXIT_FAILED
