"""The chart's alerts, with promtool: the rules parse, and each alert fires when it should and
stays quiet when it should not (`promtool test rules` on the rules as the chart renders them)."""

from __future__ import annotations

import yaml

from tests.tools import run_promtool

from .conftest import NAMESPACE, find

STAGE = {"namespace": "ml", "pipeline": "chat", "stage": "sft"}
JOB = {"job": "refinery-metrics"}  # the operator's series carry the scrape's job label


def series(name: str, values: str, **labels: str) -> dict:
    merged = {**STAGE, **JOB, **labels}
    return {"series": name + "{" + ",".join(f'{k}="{v}"' for k, v in merged.items()) + "}", "values": values}


def running(minutes: int = 200) -> dict:
    return series("refinery_stage_phase", f"1x{minutes}", phase="Running", type="sft")


def fires(alert: str, at: str, summary: str, **labels: str) -> dict:
    """The alert fires with these labels and summary (its other annotations are the rule's own)."""
    return {"eval_time": at, "alertname": alert, "exp_alerts": [{"exp_labels": labels, "exp_annotations": {"summary": summary}}]}


def quiet(alert: str, at: str) -> dict:
    return {"eval_time": at, "alertname": alert, "exp_alerts": []}


def stage_alert(alert: str, severity: str = "warning", **extra: str) -> dict:
    return {**STAGE, **JOB, "severity": severity, **extra}


# promtool's clock starts at 0: a timestamp series of `0` means "at the start of the test".
TESTS = [
    {  # stalled: last checkpoint at t=0, training on; threshold 1h + for 5m
        "name": "checkpoint stalled",
        "input_series": [
            series("refinery_stage_last_checkpoint_timestamp_seconds", "0x120"),
            series("refinery_stage_step", "10x120"),
            running(),
        ],
        "alert_rule_test": [
            quiet("RefineryCheckpointStalled", "50m"),
            quiet("RefineryCheckpointStalled", "62m"),  # past the threshold, within `for`
            fires("RefineryCheckpointStalled", "70m", "Stage ml/chat/sft has not checkpointed for 1h 10m 0s", **stage_alert("RefineryCheckpointStalled")),
        ],
    },
    {  # no checkpoint yet: counted from the stage's start
        "name": "never checkpointed",
        "input_series": [
            series("refinery_stage_start_timestamp_seconds", "0x120"),
            series("refinery_stage_step", "5x120"),
            running(),
        ],
        "alert_rule_test": [fires("RefineryCheckpointStalled", "70m", "Stage ml/chat/sft has not checkpointed for 1h 10m 0s", **stage_alert("RefineryCheckpointStalled"))],
    },
    {  # a stage checkpointing every minute, and one that has finished, stay quiet
        "name": "checkpointing or finished",
        "input_series": [
            series("refinery_stage_last_checkpoint_timestamp_seconds", "0+60x120"),
            series("refinery_stage_step", "10+10x120"),
            running(),
            series("refinery_stage_last_checkpoint_timestamp_seconds", "0x120", stage="done"),
            series("refinery_stage_step", "100x120", stage="done"),
            series("refinery_stage_phase", "0x120", stage="done", phase="Running", type="sft"),
        ],
        "alert_rule_test": [quiet("RefineryCheckpointStalled", "100m")],
    },
    {  # pending: started at 0, no step; threshold 15m + for 1m
        "name": "stage pending",
        "input_series": [
            series("refinery_stage_start_timestamp_seconds", "0x60"),
            series("refinery_stage_progress_ratio", "0x60"),
            running(60),
            # a stage that trains is not pending
            series("refinery_stage_start_timestamp_seconds", "0x60", stage="busy"),
            series("refinery_stage_progress_ratio", "0.1x60", stage="busy"),
            series("refinery_stage_phase", "1x60", stage="busy", phase="Running", type="sft"),
        ],
        "alert_rule_test": [
            quiet("RefineryStagePending", "10m"),
            fires("RefineryStagePending", "20m", "Stage ml/chat/sft started 20m 0s ago and has not trained a step", **stage_alert("RefineryStagePending")),
        ],
    },
    {  # budget: infrastructure 3; one restart (33%) is fine, two (67%) fire; application untouched
        "name": "restarts burning the budget",
        "input_series": [
            series("refinery_stage_restarts_total", "0x10 1x10 2x20", **{"class": "infrastructure"}),
            series("refinery_stage_retry_budget", "3x40", **{"class": "infrastructure"}),
            series("refinery_stage_restarts_total", "0x40", **{"class": "application"}),
            series("refinery_stage_retry_budget", "0x40", **{"class": "application"}),  # 0/0: never fires
            running(40),
        ],
        # (the division keeps only the labels it matches `on`: no job label on this alert)
        "alert_rule_test": [
            quiet("RefineryRestartsBurningBudget", "15m"),
            fires("RefineryRestartsBurningBudget", "25m", "Stage ml/chat/sft has spent 66.67% of its infrastructure retry budget", **STAGE, severity="warning", **{"class": "infrastructure"}),
        ],
    },
    {  # a failed stage no longer burns anything: quiet
        "name": "restarts of a failed stage",
        "input_series": [
            series("refinery_stage_restarts_total", "3x20", **{"class": "infrastructure"}),
            series("refinery_stage_retry_budget", "3x20", **{"class": "infrastructure"}),
            series("refinery_stage_phase", "0x20", phase="Running", type="sft"),
        ],
        "alert_rule_test": [quiet("RefineryRestartsBurningBudget", "10m")],
    },
    {
        "name": "pipeline failed",
        "input_series": [
            {"series": 'refinery_pipeline_phase{namespace="ml",pipeline="chat",phase="Failed",job="refinery-metrics"}',
             "values": "0x5 1x10"},
            {"series": 'refinery_pipeline_phase{namespace="ml",pipeline="ok",phase="Failed",job="refinery-metrics"}',
             "values": "0x15"},
        ],
        "alert_rule_test": [
            quiet("RefineryPipelineFailed", "3m"),
            fires("RefineryPipelineFailed", "8m", "Pipeline ml/chat failed", namespace="ml", pipeline="chat", phase="Failed", severity="warning",
                  **JOB),
        ],
    },
    {  # a verdict fires at once; a stage whose signals are 0 stays quiet
        "name": "reward hacking",
        "input_series": [
            series("refinery_stage_reward_hacking", "0x5 1x10", stage="rlhf", signal="groundTruthFell"),
            series("refinery_stage_reward_hacking", "0x15", stage="rlhf", signal="klExceeded"),
        ],
        "alert_rule_test": [
            quiet("RefineryRewardHacking", "3m"),
            fires("RefineryRewardHacking", "8m", "Stage ml/chat/rlhf reports reward hacking (groundTruthFell)",
                  **{**stage_alert("RefineryRewardHacking"), "stage": "rlhf", "signal": "groundTruthFell"}),
        ],
    },
    {  # operator scraped for 10m, then down; for 5m
        "name": "operator down",
        "input_series": [
            {"series": f'up{{job="refinery-metrics",namespace="{NAMESPACE}",instance="10.0.0.5:8000"}}', "values": "1x10 0x20"},
        ],
        "alert_rule_test": [
            quiet("RefineryOperatorDown", "8m"),
            quiet("RefineryOperatorDown", "13m"),
            fires("RefineryOperatorDown", "20m", "The Refinery operator is down or not scraped", job="refinery-metrics", namespace=NAMESPACE, severity="critical"),
        ],
    },
    {  # never scraped at all (wrong ServiceMonitor labels, operator never started)
        "name": "operator never scraped",
        "input_series": [],
        "alert_rule_test": [fires("RefineryOperatorDown", "10m", "The Refinery operator is down or not scraped", job="refinery-metrics", namespace=NAMESPACE, severity="critical")],
    },
]


def rules_file(chart, tmp_path) -> tuple[dict, str]:
    rule = find(chart.template({"prometheusRule": {"enabled": True}}), "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    return rule["spec"], str(path)


def test_rules_pass_promtool_check_rules(chart, tmp_path):
    _, path = rules_file(chart, tmp_path)
    result = run_promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout, result.stdout


def test_every_alert_fires_and_stays_quiet_when_it_should(chart, tmp_path):
    spec, path = rules_file(chart, tmp_path)
    alerts = {r["alert"] for g in spec["groups"] for r in g["rules"]}
    firing = {t["alertname"] for test in TESTS for t in test["alert_rule_test"] if t["exp_alerts"]}
    silent = {t["alertname"] for test in TESTS for t in test["alert_rule_test"] if not t["exp_alerts"]}
    assert firing == alerts and silent == alerts, "every alert needs a case where it fires and one where it does not"
    annotations = {r["alert"]: r["annotations"] for g in spec["groups"] for r in g["rules"]}
    for test in TESTS:
        for case in test["alert_rule_test"]:
            for expected in case["exp_alerts"]:
                expected["exp_annotations"] = {**annotations[case["alertname"]], **expected["exp_annotations"]}
    tests = tmp_path / "alerts_test.yaml"
    tests.write_text(yaml.safe_dump({"rule_files": [path], "evaluation_interval": "1m",
                                     "tests": [{"interval": "1m", **t} for t in TESTS]}, sort_keys=False))
    result = run_promtool("test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_thresholds_come_from_values(chart):
    rule = find(chart.template({"prometheusRule": {"enabled": True, "checkpointStalledSeconds": 7200,
                                                   "restartBudgetRatio": 0.8, "operatorDownFor": "15m"}}), "PrometheusRule")
    by_name = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "> 7200" in by_name["RefineryCheckpointStalled"]["expr"]
    assert "> 0.8" in by_name["RefineryRestartsBurningBudget"]["expr"]
    assert by_name["RefineryOperatorDown"]["for"] == "15m"
    for r in by_name.values():
        assert r["annotations"]["runbook_url"].endswith("#" + r["alert"].lower())
