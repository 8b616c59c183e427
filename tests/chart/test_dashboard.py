"""The Grafana dashboard: generated, queries only metrics we define, every query parses (promtool)."""

from __future__ import annotations

import importlib.util
import json
import re

import yaml

from refinery_operator import metrics as operator_metrics
from refinery_trainer import metrics as trainer_metrics
from tests.tools import REPO, run_promtool

from .conftest import CHART, find

DASHBOARD = CHART / "dashboards" / "refinery.json"
# Grafana's variables, replaced by what they expand to before promtool parses a query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "30s", "$namespace": ".*", "$pipeline": ".*"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
                "inf", "nan", "le"}
PROMETHEUS_BUILTIN = {"up"}  # written by Prometheus itself for every scrape target


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expr) of every panel target and query variable."""
    out = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", v["query"]["query"])
            out.append((f"variable {v['name']}", inner.group(1)))
    return out


def expand(expr: str) -> str:
    for name, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions, labels or keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word, after = m.group(0), text[m.end():].lstrip()[:1]
        if after == "(" or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def defined_metrics() -> set[str]:
    names = set(PROMETHEUS_BUILTIN)
    for d in (*operator_metrics.METRICS, *trainer_metrics.METRICS):
        names.add(d.name)
        if d.type == "histogram":
            names |= {d.name + s for s in ("_bucket", "_sum", "_count")}
    return names


def test_the_committed_dashboard_is_the_generated_one():
    spec = importlib.util.spec_from_file_location("make_dashboard", REPO / "scripts" / "make_dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert DASHBOARD.read_text() == module.render(), "regenerate it: python scripts/make_dashboard.py"


def test_every_query_uses_only_metrics_that_exist():
    defined = defined_metrics()
    used = set()
    for title, expr in queries(load_dashboard()):
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        assert names <= defined, f"{title}: {sorted(names - defined)} not defined in operator or trainer metrics.py"
        used |= names
    # the dashboard shows the main series of both sides
    assert {"refinery_pipelines", "refinery_stage_progress_ratio", "refinery_stage_last_checkpoint_timestamp_seconds",
            "refinery_trainer_loss", "refinery_trainer_reward", "refinery_trainer_tokens_total",
            "refinery_stage_restarts_total", "refinery_stage_gpu_seconds_total", "refinery_stage_lost_gpu_seconds_total",
            "refinery_checkpoint_status_latency_seconds_bucket", "refinery_next_job_latency_seconds_bucket"} <= used


def test_every_query_parses(tmp_path):
    """promtool parses PromQL when it checks rules: each query becomes a recording rule."""
    rules = [{"record": f"dashboard:query_{i}", "expr": expand(expr)} for i, (_, expr) in enumerate(queries(load_dashboard()))]
    path = tmp_path / "dashboard_queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_templated_by_namespace_and_pipeline_with_a_datasource_variable():
    dashboard = load_dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"namespace", "pipeline"} <= variables.keys()
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for t in panel["targets"]:
            if "refinery_" in t["expr"] and "_latency_seconds" not in t["expr"]:
                assert "$namespace" in t["expr"], f"{panel['title']}: not filtered by namespace"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_chart_ships_it_for_the_grafana_sidecar(chart):
    configmap = find(chart.template({"dashboard": {"enabled": True}}), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["refinery.json"]) == load_dashboard()
