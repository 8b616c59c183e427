"""Write charts/refinery/dashboards/refinery.json, the Grafana dashboard of Refinery.

    python scripts/make_dashboard.py

The dashboard is generated so that its queries stay few and uniform (every one filtered by the
`namespace` and `pipeline` variables); the JSON is committed, imports into any Grafana as is
(Dashboards > Import; pick a Prometheus data source) and ships in the chart's ConfigMap.
tests/chart/test_dashboard.py checks that the committed file is this script's output, that every
query names only metrics defined in refinery_operator.metrics or refinery_trainer.metrics, and
that promtool parses every query.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "charts" / "refinery" / "dashboards" / "refinery.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'namespace=~"$namespace", pipeline=~"$pipeline"'
STAGE = "{{namespace}}/{{pipeline}}/{{stage}}"


class Layout:
    """Panels placed left to right on a 24-column grid, a new row when one is full."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = 0
        self.row_height = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False, "id": len(self.panels) + 1,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1

    def add(self, panel: dict[str, Any], w: int = 8, h: int = 8) -> None:
        if self.x + w > 24:
            self._newline()
        panel.update(id=len(self.panels) + 1, datasource=DS, gridPos={"h": h, "w": w, "x": self.x, "y": self.y})
        self.panels.append(panel)
        self.x += w
        self.row_height = max(self.row_height, h)

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_height
        self.x, self.row_height = 0, 0


def target(expr: str, legend: str = STAGE, ref: str = "A", instant: bool = False) -> dict[str, Any]:
    t = {"refId": ref, "datasource": DS, "expr": expr, "legendFormat": legend, "range": not instant, "instant": instant}
    return t


def timeseries(title: str, description: str, *targets: dict, unit: str = "short", **options: Any) -> dict[str, Any]:
    return {
        "type": "timeseries", "title": title, "description": description, "targets": list(targets),
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 0, "showPoints": "never",
                                                              "spanNulls": True}, **options}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def bargauge(title: str, description: str, expr: str, unit: str, legend: str = STAGE, **defaults: Any) -> dict[str, Any]:
    return {
        "type": "bargauge", "title": title, "description": description, "targets": [target(expr, legend, instant=True)],
        "fieldConfig": {"defaults": {"unit": unit, **defaults}, "overrides": []},
        "options": {"orientation": "horizontal", "displayMode": "gradient", "showUnfilled": True,
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
    }


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name, "label": label, "type": "query", "datasource": DS, "query": {"query": query, "refId": name},
        "definition": query, "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*", "sort": 1,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }


def build() -> dict[str, Any]:
    g = Layout()
    g.row("Pipelines")
    g.add(bargauge("Pipelines by phase", "TrainingPipelines the operator knows, by phase.",
                   'sum by (phase) (refinery_pipelines{namespace=~"$namespace"})', "short", "{{phase}}"), w=6)
    g.add(bargauge("Stage progress", "Share of each stage's planned steps done.",
                   f"refinery_stage_progress_ratio{{{SEL}}}", "percentunit", min=0, max=1), w=10)
    g.add({
        "type": "table", "title": "Stage phase", "description": "Current phase of every stage (1 = in that phase).",
        "targets": [target(f"refinery_stage_phase{{{SEL}}} == 1", "", instant=True) | {"format": "table"}],
        "transformations": [{"id": "organize", "options": {
            "excludeByName": {"Time": True, "Value": True, "__name__": True, "instance": True, "job": True,
                              "container": True, "endpoint": True, "pod": True, "service": True}}}],
        "fieldConfig": {"defaults": {}, "overrides": []}, "options": {"showHeader": True},
    }, w=8)
    g.add(timeseries("Checkpoint age", "Time since each running stage's newest complete checkpoint: what a failure "
                     "now would cost. RefineryCheckpointStalled fires past prometheusRule.checkpointStalledSeconds.",
                     target(f'(time() - refinery_stage_last_checkpoint_timestamp_seconds{{{SEL}}}) '
                            f'and on (namespace, pipeline, stage) refinery_stage_phase{{{SEL}, phase="Running"}} == 1'),
                     unit="s"), w=12)
    g.add(timeseries("Last checkpoint step", "Optimiser step of each stage's newest complete checkpoint, and the "
                     "step it is at.", target(f"refinery_stage_last_checkpoint_step{{{SEL}}}", f"checkpoint {STAGE}"),
                     target(f"refinery_stage_step{{{SEL}}}", f"step {STAGE}", ref="B")), w=12)

    g.add(timeseries("Time left (estimated)", "Seconds until each running pipeline ends (the longest chain of its "
                     "remaining stages) and each running stage's attempt ends, at the pace measured since its first "
                     "step; README: Status says how good the estimate is.",
                     target(f"refinery_pipeline_eta_seconds{{{SEL}}}", "{{namespace}}/{{pipeline}}"),
                     target(f"refinery_stage_eta_seconds{{{SEL}}} > 0", STAGE, ref="B"), unit="s"), w=24)

    g.row("Training")
    g.add(timeseries("Training loss", "Mean training loss of each logging window, per stage (trainer pods).",
                     target(f"refinery_trainer_loss{{{SEL}}}")), w=12)
    g.add(timeseries("Evaluation loss", "Loss on the held-out data at each evaluation (training.evalSteps).",
                     target(f"refinery_trainer_eval_loss{{{SEL}}}")), w=12)
    g.add(timeseries("Reward (rlhf)", "Mean reward-model score of the completions sampled in each logging window.",
                     target(f'refinery_trainer_reward{{{SEL}, type="rlhf"}}')), w=8)
    g.add(timeseries("KL to the initial policy (rlhf)", "KL divergence of the policy from where it started; "
                     "a steep rise means it is drifting (raise rl.beta).", target(f'refinery_trainer_kl{{{SEL}, type="rlhf"}}')),
          w=8)
    g.add(timeseries("Evaluation metrics", "Every other number of each evaluation: reward-model accuracy, "
                     "held-out reward ...", target(f"refinery_trainer_eval_metric{{{SEL}}}", f"{{{{metric}}}} {STAGE}")), w=8)
    g.add(timeseries("Throughput: tokens/s", "Non-padding tokens trained on per second: over wall-clock time (the "
                     "counter's rate) and over training-step time in each logging window (the trainer's gauge).",
                     target(f"sum by (namespace, pipeline, stage) (rate(refinery_trainer_tokens_total{{{SEL}}}[$__rate_interval]))",
                            f"wall {STAGE}"),
                     target(f"refinery_trainer_tokens_per_second{{{SEL}}}", f"steps {STAGE}", ref="B")),
          w=8)
    g.add(timeseries("Throughput: steps/s", "Optimiser steps per second.",
                     target(f"sum by (namespace, pipeline, stage) (rate(refinery_trainer_steps_total{{{SEL}}}[$__rate_interval]))")),
          w=8)
    g.add(timeseries("Learning rate", "Learning rate at each logging step.", target(f"refinery_trainer_learning_rate{{{SEL}}}")),
          w=8)
    g.add(timeseries("MFU", "Model FLOPs utilisation of each stage's GPUs in each logging window: tokens/s x (6 x "
                     "parameters + attention FLOPs per token) over their dense bf16 peak. Only on GPUs whose peak is known.",
                     target(f"refinery_trainer_mfu_ratio{{{SEL}}}"), unit="percentunit", min=0), w=8)

    g.row("Reliability and cost")
    g.add(timeseries("Restarts by failure class", "Stage attempts retried, by who ended them: application (the trainer), "
                     "infrastructure (OOM, StartTimeout) or disruption (deleted, evicted, preempted, node lost).",
                     target(f"sum by (class) (refinery_stage_restarts_total{{{SEL}}})", "{{class}}")), w=8)
    g.add(timeseries("GPU-hours", "GPU time held by each stage (GPUs x wall-clock since it started).",
                     target(f"refinery_stage_gpu_seconds_total{{{SEL}}} / 3600")), w=8)
    g.add(timeseries("Lost GPU-hours", "GPU time thrown away by failures: from the newest checkpoint to each failure.",
                     target(f"refinery_stage_lost_gpu_seconds_total{{{SEL}}} / 3600")), w=8)
    g.add(bargauge("Stage duration", "Wall-clock time from each stage's first start to its end (or now).",
                   f"refinery_stage_duration_seconds{{{SEL}}}", "s"), w=12)
    g.add(bargauge("Retry budget left", "Retries each stage may still spend, per failure class.",
                   f"clamp_min(refinery_stage_retry_budget{{{SEL}}} - on (namespace, pipeline, stage, class) "
                   f"refinery_stage_restarts_total{{{SEL}}}, 0)", "short", f"{STAGE} {{{{class}}}}"), w=12)

    g.row("Operator")
    for title, metric, description in [
        ("Checkpoint to status latency", "refinery_checkpoint_status_latency_seconds",
         "From a checkpoint's completion to it showing in kubectl get tp. Target: p99 under 1 s."),
        ("Stage done to next Job latency", "refinery_next_job_latency_seconds",
         "From a stage succeeding to the Job of a stage that waited for it being created."),
    ]:
        g.add(timeseries(title, description, *[
            target(f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket[$__rate_interval])))", f"p{round(q * 100)}", ref)
            for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))], unit="s"), w=9)
    g.add(timeseries("Operator up", "1 while Prometheus scrapes the operator; RefineryOperatorDown fires when it does not.",
                     target('up{job=~".*refinery.*-metrics"}', "{{namespace}}/{{pod}}")), w=6)

    return {
        "title": "Refinery",
        "uid": "refinery-pipelines",
        "description": "TrainingPipelines: stages, checkpoints, training curves, restarts, GPU time, operator latency.",
        "tags": ["refinery", "training", "llm"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1, "regex": ""},
            variable("namespace", "Namespace", "label_values(refinery_pipeline_phase, namespace)"),
            variable("pipeline", "Pipeline", 'label_values(refinery_pipeline_phase{namespace=~"$namespace"}, pipeline)'),
        ]},
        "panels": g.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(f"wrote {OUT}", file=sys.stderr)
