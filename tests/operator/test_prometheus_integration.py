"""A real Prometheus scrapes the real operator while a pipeline runs; every dashboard query is run
against it, and the main panels must show data.

- Prometheus: Debian's `prometheus` package, on 127.0.0.1 (a free port, a temp TSDB, 1 s scrapes),
  with one scrape job translated from the chart's ServiceMonitor the way the Prometheus Operator
  does it: job = the metrics Service's name, the ServiceMonitor's `honorLabels`, and the target
  labels it adds (namespace, service, pod, container, endpoint). So a label clash between the
  operator's series and the target (both have `namespace`) shows here as it would on a cluster.
- The operator: the real kopf operator in-process (kmock + test kubelet + fake_stage.py, as in
  test_operator_fake_stage.py); its /metrics is the server its start-up opened
  (`handlers.serve_metrics`, once per process, see `operator_metrics_port`).
- The pipeline: pretrain -> sft, the pretrain pod evicted after its first checkpoints, so the
  restart counters, lost GPU time and both latency histograms move while Prometheus scrapes.
- The queries: each panel target and variable query of charts/refinery/dashboards/refinery.json,
  with Grafana's variables replaced by concrete values. Each must parse (`/api/v1/query`); the
  panels in `PANELS_WITH_DATA` must then return at least one finite value, queried as Grafana
  queries them (instant targets at now, range targets over the run). The training-curve panels
  read the trainer pods' metrics, which the fake stage does not serve: they only have to parse.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from refinery_operator import handlers
from refinery_operator import metrics as operator_metrics
from tests.builders import make_pipeline
from tests.chart.conftest import chart, find, helm  # noqa: F401 - fixtures: the chart rendered by a real helm
from tests.chart.test_dashboard import load_dashboard
from tests.tools import require_tool

from .conftest import NAMESPACE, create_pipeline, stored, wait_for
from .test_operator_fake_stage import FAKE_STAGE, PIPELINES_KEY, phase

pytestmark = pytest.mark.timeout(120)

PIPELINE = "observed"
SCRAPE_S = 1
# Grafana's variables with the values a user looking at this pipeline would pick. $__rate_interval
# is what Grafana computes for a 1 s scrape interval and 1 s step: max(step + scrape, 4 x scrape).
VARIABLES = {"$namespace": NAMESPACE, "$pipeline": PIPELINE, "$__rate_interval": f"{4 * SCRAPE_S}s",
             "$__interval": f"{SCRAPE_S}s"}
# Panels (and variables) the operator's own series fill during this run: each must return data.
PANELS_WITH_DATA = [
    "Pipelines by phase", "Stage progress", "Stage phase", "Checkpoint age", "Last checkpoint step",
    "Restarts by failure class", "GPU-hours", "Lost GPU-hours", "Stage duration", "Retry budget left",
    "Checkpoint to status latency", "Stage done to next Job latency", "Operator up", "Time left (estimated)",
    "variable namespace", "variable pipeline",
]
# Panels of the trainer pods' metrics (PodMonitor): fake_stage.py serves none, so they only parse.
TRAINER_PANELS = [
    "Training loss", "Evaluation loss", "Reward (rlhf)", "KL to the initial policy (rlhf)", "Evaluation metrics",
    "Throughput: tokens/s", "Throughput: steps/s", "Learning rate", "MFU",
]


@pytest.fixture(autouse=True)
def fake_trainer(kubelet):
    kubelet.command_map["refinery-train"] = FAKE_STAGE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the operator's /metrics ---------------------------------------------------------------------


@pytest.fixture()
def operator_metrics_port(monkeypatch: pytest.MonkeyPatch):
    """The port the in-process operator serves /metrics on.

    `handlers.serve_metrics` opens the server once per process (at the first operator start-up)
    and never closes it. If no operator has started yet in this session, point it at a free port
    (REFINERY_METRICS_PORT); if one has, it serves where it started. If that start-up could not
    serve (port 8000 taken, e.g. by a parallel run), serve the same registry here on a free
    loopback port and close it afterwards."""
    if not handlers._metrics_served:
        port = free_port()
        monkeypatch.setenv(operator_metrics.PORT_ENV, str(port))
        yield port  # the test checks that the start-up served it
    elif handlers._metrics_served[0]:
        yield handlers._metrics_served[0]
    else:
        port = free_port()
        server, thread = operator_metrics.OPERATOR.serve(port, addr="127.0.0.1")
        yield port
        server.shutdown()
        server.server_close()
        thread.join(5)


# ---- Prometheus -----------------------------------------------------------------------------------


class Prometheus:
    def __init__(self, url: str, process: subprocess.Popen, log: Path):
        self.url, self.process, self.log = url, process, log

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        """GET an API path; the decoded JSON, also for 4xx answers (errors come as JSON)."""
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            return json.load(e)

    async def aget(self, path: str, **params: Any) -> dict[str, Any]:
        # Off the event loop: the test kubelet runs on it.
        return await asyncio.to_thread(self.get, path, **params)


def scrape_config(service_monitor: dict[str, Any], service_name: str, target: str) -> dict[str, Any]:
    """The scrape job the Prometheus Operator generates from the chart's ServiceMonitor, with a
    static target instead of Kubernetes service discovery (same labels on the target)."""
    (endpoint,) = service_monitor["spec"]["endpoints"]
    assert service_monitor["spec"].get("jobLabel", "") == ""  # so `job` is the Service's name
    return {
        "job_name": service_name,
        "honor_labels": bool(endpoint.get("honorLabels", False)),
        "metrics_path": endpoint.get("path", "/metrics"),
        "scrape_interval": f"{SCRAPE_S}s",
        "scrape_timeout": f"{SCRAPE_S}s",
        "static_configs": [{"targets": [target], "labels": {
            "namespace": service_monitor["metadata"]["namespace"], "service": service_name,
            "pod": "refinery-operator-0", "container": "operator", "endpoint": endpoint["port"]}}],
    }


def start_prometheus(folder: Path, job: dict[str, Any]) -> Prometheus:
    binary = require_tool("prometheus", "apt-get install prometheus")
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
                                      "scrape_configs": [job]}))
    for _ in range(3):  # a free port can be taken between picking it and Prometheus binding it
        port, log = free_port(), folder / "prometheus.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=info"],
                stdout=out, stderr=subprocess.STDOUT, cwd=folder)
        prometheus = Prometheus(f"http://127.0.0.1:{port}", process, log)
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return prometheus
            time.sleep(0.2)
        stop_prometheus(prometheus)
        if "address already in use" not in log.read_text():
            break
    raise AssertionError(f"Prometheus did not become ready:\n{log.read_text()[-3000:]}")


def stop_prometheus(prometheus: Prometheus) -> None:
    if prometheus.process.poll() is None:
        prometheus.process.terminate()
        try:
            prometheus.process.wait(15)
        except subprocess.TimeoutExpired:
            prometheus.process.kill()
            prometheus.process.wait(5)


@pytest.fixture()
def prometheus(tmp_path: Path, chart, operator_metrics_port: int):  # noqa: F811 - the imported fixture
    objects = chart.template({"serviceMonitor": {"enabled": True}})
    service = find(objects, "Service")
    job = scrape_config(find(objects, "ServiceMonitor"), service["metadata"]["name"], f"127.0.0.1:{operator_metrics_port}")
    server = start_prometheus(tmp_path / "prometheus", job)
    yield server
    stop_prometheus(server)
    assert server.process.returncode == 0, f"Prometheus did not shut down cleanly:\n{server.log.read_text()[-3000:]}"


# ---- the dashboard's queries ----------------------------------------------------------------------


def dashboard_queries() -> list[tuple[str, str, bool]]:
    """(panel title, expression, instant) of every panel target and variable query."""
    dashboard = load_dashboard()
    out = [(p["title"], t["expr"], bool(t.get("instant"))) for p in dashboard["panels"] for t in p.get("targets", [])]
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", v["query"]["query"])
            out.append((f"variable {v['name']}", inner.group(1), True))
    return out


def expand(expr: str) -> str:
    for name, value in sorted(VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
    return expr


def finite_values(data: dict[str, Any]) -> list[float]:
    """Every finite sample value of a query answer (vector or matrix)."""
    values = []
    for series in data["result"]:
        for _, value in series.get("values", [series["value"]] if "value" in series else []):
            if math.isfinite(float(value)):
                values.append(float(value))
    return values


def series_values(data: dict[str, Any], label: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for series in data["result"]:
        out.setdefault(series["metric"].get(label, ""), []).extend(
            float(v) for _, v in series.get("values", [series["value"]] if "value" in series else []))
    return out


# ---- the test -------------------------------------------------------------------------------------


def pipeline_manifest() -> dict[str, Any]:
    manifest = make_pipeline(PIPELINE).stage("pretrain", "pretrain", retries={"infrastructure": 2, "backoffSeconds": 1}) \
        .stage("sft", "sft", from_="pretrain").manifest()
    pretrain, sft = manifest["spec"]["stages"]
    pretrain["training"] = {"maxSteps": 100, "saveSteps": 4}  # ~5 s of steps: several scrapes while it runs
    sft["training"] = {"maxSteps": 20, "saveSteps": 4}
    return manifest


def status_of(emulator) -> dict[str, Any]:
    return (stored(emulator, PIPELINES_KEY, PIPELINE) or {}).get("status") or {}


async def test_prometheus_scrapes_the_operator_and_the_dashboard_shows_the_run(
        emulator, cluster, start_operator, kubelet, prometheus, operator_metrics_port):
    panels = {title for title, _, _ in dashboard_queries()}
    assert panels == set(PANELS_WITH_DATA) | set(TRAINER_PANELS), (
        "a dashboard panel this test does not know: put it in PANELS_WITH_DATA or TRAINER_PANELS")

    async with start_operator():
        async def scraped(query: str) -> list[dict[str, Any]]:
            return (await prometheus.aget("/api/v1/query", query=query)).get("data", {}).get("result", [])

        async def eventually(query: str, what: str, timeout: float = 20) -> None:
            deadline = time.monotonic() + timeout
            while not await scraped(query):
                assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what} ({query})"
                await asyncio.sleep(0.5)

        assert handlers._metrics_served[0] in (operator_metrics_port, 0), handlers._metrics_served  # 0: served here
        # The operator is up and Prometheus scrapes it before the pipeline starts, so every change
        # of the run (counters, histograms) happens between two scrapes.
        await eventually("up == 1", "a successful scrape of the operator")
        (target,) = (await prometheus.aget("/api/v1/targets"))["data"]["activeTargets"]
        assert target["health"] == "up" and target["scrapeUrl"].endswith(f":{operator_metrics_port}/metrics"), target
        started = time.time()

        await create_pipeline(cluster, pipeline_manifest())
        await wait_for(lambda: (status_of(emulator).get("checkpointStep") or 0) >= 8, 30, what="two checkpoints")
        await eventually(f'refinery_stage_last_checkpoint_step{{pipeline="{PIPELINE}", stage="pretrain"}} >= 4',
                         "a scrape of a running stage with a checkpoint")
        await kubelet.evict(f"{PIPELINE}-pretrain-1")
        await wait_for(lambda: phase(emulator, PIPELINE) in ("Succeeded", "Failed"), 45, what="the pipeline to finish")
        assert phase(emulator, PIPELINE) == "Succeeded", status_of(emulator)
        assert status_of(emulator)["stages"][0]["restartsByClass"] == {"application": 0, "infrastructure": 0, "disruption": 1}
        # Two scrapes of the final state (the operator forgets the pipeline when it stops: query now).
        await eventually(f'refinery_pipeline_phase{{pipeline="{PIPELINE}", phase="Succeeded"}} == 1', "the Succeeded phase")
        await asyncio.sleep(2 * SCRAPE_S)
        end = time.time()

        answers: dict[str, list[dict[str, Any]]] = {}
        for title, expr, instant in dashboard_queries():
            query = expand(expr)
            parsed = await prometheus.aget("/api/v1/query", query=query, time=end)
            assert parsed["status"] == "success", f"{title}: {query}\n{parsed}"
            if not instant:  # a time series panel: Grafana asks for the range it shows
                ranged = await prometheus.aget("/api/v1/query_range", query=query, start=started - 2, end=end, step=SCRAPE_S)
                assert ranged["status"] == "success", f"{title}: {query}\n{ranged}"
                parsed = ranged
            answers.setdefault(title, []).append({"query": query, **parsed["data"]})

    (ns,) = answers["variable namespace"]
    assert series_values(ns, "namespace").keys() == {NAMESPACE}, (
        "the pipelines' namespace label must survive the scrape (ServiceMonitor honorLabels)")
    empty = [f"{title}: {a['query']}" for title in PANELS_WITH_DATA for a in answers[title] if not finite_values(a)]
    assert not empty, "panels without data:\n" + "\n".join(empty)
    assert not [t for t in TRAINER_PANELS for a in answers[t] if a["result"]], "the fake stage serves no trainer metrics"

    # What the panels show is this run.
    (by_phase,) = answers["Pipelines by phase"]
    assert series_values(by_phase, "phase")["Succeeded"] == [1.0]
    (progress,) = answers["Stage progress"]
    assert series_values(progress, "stage") == {"pretrain": [1.0], "sft": [1.0]}
    (restarts,) = answers["Restarts by failure class"]
    assert max(series_values(restarts, "class")["disruption"]) == 1.0  # the eviction: a disruption, not a failure
    assert max(series_values(restarts, "class")["application"]) == 0.0
    (age,) = answers["Checkpoint age"]
    assert all(0 <= v < 60 for v in finite_values(age))
    checkpoint, step = answers["Last checkpoint step"]
    assert max(series_values(checkpoint, "stage")["pretrain"]) == 100 and max(series_values(step, "stage")["sft"]) == 20
    (up,) = answers["Operator up"]
    assert finite_values(up) and set(finite_values(up)) == {1.0}
