"""The example pipeline run once per test session in local mode, as the README's first command
runs it, with its operator metrics scraped while it runs and every stage tracked on a real MLflow
server (spec.tracking.mlflow added to a copy of examples/tiny-chat.yaml); and the helpers the
local-mode tests share."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "tiny-chat.yaml"
EXPERIMENT = "tiny-chat-tests"

URL_LINE = re.compile(r"^metrics: (http://127\.0\.0\.1:(\d+)/metrics)$", re.M)
Samples = dict[tuple[str, frozenset], float]


def refinery(*args: str, **kwargs) -> subprocess.Popen:
    # No $REFINERY_METRICS_PORT from the caller's shell: the runs use the default port rule.
    env = {k: v for k, v in os.environ.items() if k != "REFINERY_METRICS_PORT"} | {"HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "refinery_operator.cli", *args], env=env, **kwargs)


def stage_of(status: dict, name: str) -> dict:
    return next(s for s in status["stages"] if s["name"] == name)


def scrape(url: str) -> Samples | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None  # the run ended between two scrapes
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def stage_sample(samples: Samples, name: str, stage: str, **labels: str) -> float | None:
    key = {"namespace": "local", "pipeline": "tiny-chat", "stage": stage, **labels}
    return samples.get((name, frozenset(key.items())))


def phase_of(samples: Samples, stage: str, type_: str) -> str | None:
    """The phase whose refinery_stage_phase sample is 1 (None: the stage has no samples)."""
    phases = ("Pending", "Running", "Succeeded", "Failed", "Suspended")
    current = [p for p in phases if stage_sample(samples, "refinery_stage_phase", stage, type=type_, phase=p) == 1.0]
    return current[0] if len(current) == 1 else None


@pytest.fixture(scope="session")
def example_run(tmp_path_factory, mlflow_server):
    """The example pipeline, its /metrics scraped every half second while it runs."""
    workdir = tmp_path_factory.mktemp("example")
    manifest = yaml.safe_load(EXAMPLE.read_text())
    manifest["spec"]["tracking"] = {"mlflow": {"trackingUri": mlflow_server.url, "experiment": EXPERIMENT, "logModel": True}}
    tracked = workdir / "tiny-chat.yaml"
    tracked.write_text(yaml.safe_dump(manifest, sort_keys=False))
    started = time.monotonic()
    proc = refinery("run", str(tracked), "--data-root", str(EXAMPLE.parent), "--workdir", str(workdir), "--quiet",
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def read_output():
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    scrapes: list[Samples] = []
    deadline = started + 900
    while proc.poll() is None and time.monotonic() < deadline:
        url = URL_LINE.search("".join(lines))
        if url and (samples := scrape(url.group(1))):
            scrapes.append(samples)
        time.sleep(0.5)
    proc.wait(timeout=max(1, deadline - time.monotonic()))
    reader.join(timeout=10)
    out = "".join(lines)
    elapsed = time.monotonic() - started
    status = json.loads((workdir / "tiny-chat" / "status.json").read_text())
    print(f"\nexample pipeline: {elapsed:.1f} s, {len(scrapes)} scrapes of /metrics\n{out}")
    return proc.returncode, out, status, workdir, scrapes


