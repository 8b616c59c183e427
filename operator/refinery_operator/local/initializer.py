"""Local mode's pipeline initializer: `refinery-train fetch` as a child process, before any stage.

The same command the operator's initializer Job runs: every remote source is fetched once into
`<workdir>/<pipeline>/sources/` (a re-run finds them complete and downloads nothing) and every
stage's inputs are checked. A transient failure is tried again, like an infrastructure failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from refinery.api.run import FETCH_RESULT_FILE, FetchResult
from refinery.api.sources import SOURCES_DIR
from refinery.api.v1alpha1 import TrainingPipeline
from refinery.core.sources import INITIALIZER_RETRIES, REASON_SOURCE_ERROR, build_fetch_run

EXIT_TRANSIENT = 75  # refinery_trainer.sources.fetch.EXIT_TRANSIENT


def run_initializer(pipeline: TrainingPipeline, root: Path, data_root: Path, env: dict[str, str]) -> FetchResult:
    """Fetch and check; the FetchResult the process wrote (or a failure naming its log)."""
    runs = root / ".runs"
    runs.mkdir(parents=True, exist_ok=True)
    config = runs / "sources.json"
    config.write_text(json.dumps(build_fetch_run(pipeline, str(root), str(data_root)).dump(), indent=2))
    result_file = root / SOURCES_DIR / FETCH_RESULT_FILE
    log_path = runs / "sources.log"
    for _ in range(1 + INITIALIZER_RETRIES):
        result_file.unlink(missing_ok=True)
        with open(log_path, "ab") as log:
            code = subprocess.run([sys.executable, "-m", "refinery_trainer", "fetch", "--config", str(config)],
                                  stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env).returncode
        try:
            result = FetchResult.model_validate_json(result_file.read_text())
        except (FileNotFoundError, ValueError):
            result = FetchResult(phase="Failed", reason=REASON_SOURCE_ERROR,
                                 message=f"the source fetch exited with code {code}; see {log_path}")
        if code != EXIT_TRANSIENT:
            return result
    return result
