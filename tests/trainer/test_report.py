"""The progress Reporter: throttling, immediate events, sinks, and never failing training."""

from __future__ import annotations

import json
import sys
import types

import pytest

from refinery.api.run import ConfigMapReporter, FileReporter, ProgressRecord, StageRun
from refinery.api.v1alpha1 import Checkpoint
from refinery_trainer.report import ConfigMapSink, FileSink, Reporter, make_sink


class ListSink:
    def __init__(self):
        self.sent: list[dict] = []

    def write(self, text: str) -> None:
        self.sent.append(json.loads(text))


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def reporter():
    sink, clock = ListSink(), Clock()
    return Reporter(sink, attempt=2, interval_s=5.0, clock=clock), sink, clock


def test_periodic_updates_are_throttled(reporter):
    rep, sink, clock = reporter
    assert rep.update(step=1, max_steps=10)  # the first report goes out at once
    assert not rep.update(step=2)
    clock.now += 5
    assert rep.update(step=3)
    assert [s["step"] for s in sink.sent] == [1, 3]
    assert sink.sent[-1]["progress"] == pytest.approx(0.3) and sink.sent[-1]["attempt"] == 2
    assert rep.record.step == 3


def test_checkpoints_and_the_end_are_reported_immediately(reporter):
    rep, sink, clock = reporter
    rep.update(step=1, max_steps=10)
    rep.checkpoint(Checkpoint(step=5, path="/ckpt/checkpoint-5", time="t"), count=1, metrics={"trainLoss": 2.0})
    rep.succeeded({"evalLoss": 1.5}, output="/stage/model", step=10)
    last = ProgressRecord.model_validate(sink.sent[-1])
    assert sink.sent[1]["lastCheckpoint"] == {"step": 5, "path": "/ckpt/checkpoint-5", "time": "t"}
    assert last.phase == "Succeeded" and last.progress == 1.0 and last.output == "/stage/model"
    # The final record carries the result's metrics only, not the live values reported before.
    assert last.metrics == {"evalLoss": 1.5} and last.checkpoints == 1


def test_failure_carries_message_and_reason(reporter):
    rep, sink, _ = reporter
    rep.failed("data.jsonl line 3: malformed JSON", "BadData")
    assert sink.sent[-1]["phase"] == "Failed" and sink.sent[-1]["failureReason"] == "BadData"


def test_a_failing_sink_is_logged_not_raised(caplog):
    class Broken:
        def write(self, text):
            err = RuntimeError("HTTP response headers: {'Authorization': 'Bearer s3cr3t'}")  # as ApiException's str
            err.status, err.reason = 403, "Forbidden"
            raise err

    rep = Reporter(Broken())
    assert rep.update(step=1, force=True) is False
    assert "HTTP 403 Forbidden" in caplog.text and "s3cr3t" not in caplog.text  # status and reason, never headers


def test_file_sink_rewrites_atomically(tmp_path):
    path = tmp_path / "progress.json"
    rep = Reporter(FileSink(str(path)))
    rep.update(step=1, force=True)
    rep.update(step=2, force=True)
    assert json.loads(path.read_text())["step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["progress.json"]


def test_sink_follows_the_stage_run():
    assert isinstance(make_sink(FileReporter(path="/p.json")), FileSink)
    sink = make_sink(ConfigMapReporter(namespace="ns", name="p-sft-progress"))
    assert isinstance(sink, ConfigMapSink) and (sink.namespace, sink.name) == ("ns", "p-sft-progress")
    assert make_sink(None) is None
    run = StageRun.model_validate({"pipeline": "p", "stage": {"name": "s", "type": "sft", "from": "a", "data": {"path": "d"}},
                                   "attempt": 3, "stageDir": "/s", "dataRoot": "/", "progressIntervalS": 7})
    rep = Reporter.for_run(run)
    assert rep.sink is None and rep.interval_s == 7 and rep.record.attempt == 3


def test_configmap_sink_patches_progress_json_and_falls_back_to_kubeconfig(monkeypatch):
    calls = []

    class ConfigException(Exception):
        pass

    def load_incluster_config():
        calls.append("incluster")
        raise ConfigException("not in a pod")

    class CoreV1Api:
        def patch_namespaced_config_map(self, name, namespace, body):
            calls.append(("patch", namespace, name, body))

    config = types.SimpleNamespace(ConfigException=ConfigException, load_incluster_config=load_incluster_config,
                                   load_kube_config=lambda: calls.append("kubeconfig"))
    fake = types.SimpleNamespace(config=config, client=types.SimpleNamespace(CoreV1Api=CoreV1Api))
    monkeypatch.setitem(sys.modules, "kubernetes", fake)

    rep = Reporter(ConfigMapSink("ns", "p-sft-progress"))
    assert rep.update(step=4, force=True)
    assert rep.update(step=5, force=True)
    assert calls[:2] == ["incluster", "kubeconfig"] and calls.count("kubeconfig") == 1
    _, namespace, name, body = calls[-1]
    assert (namespace, name) == ("ns", "p-sft-progress")
    assert json.loads(body["data"]["progress.json"])["step"] == 5


def test_the_estimate_is_the_pace_since_the_first_step_times_what_is_left(reporter):
    rep, sink, clock = reporter
    rep.update(step=20, max_steps=100)  # a resumed attempt: loading and the first step are not its pace
    assert rep.record.estimated_remaining_seconds is None
    clock.now += 30.0  # a slow first step (warm-up)
    rep.update(step=21)
    assert rep.record.estimated_remaining_seconds is None  # one point of pace is not a pace
    clock.now += 10.0
    rep.update(step=31)  # 10 steps in 10 s, 69 left
    assert rep.record.estimated_remaining_seconds == pytest.approx(69.0)
    assert rep.record.seconds_per_step == pytest.approx(1.0)
    clock.now += 30.0  # an evaluation between steps: the user waits for it too, so the pace slows
    rep.update(step=41)
    assert rep.record.estimated_remaining_seconds == pytest.approx(59 * 2.0)
    rep.succeeded({"evalLoss": 1.0}, output="/m", step=100)
    assert sink.sent[-1]["estimatedRemainingSeconds"] == 0.0


def test_the_eval_stage_gets_an_estimate_from_its_share_of_models_done(reporter):
    rep, _, clock = reporter
    rep.update(progress=0.0)
    clock.now += 40.0
    rep.update(progress=0.25)  # the first model, with every load the stage does once
    clock.now += 20.0
    rep.update(progress=0.5)
    assert rep.record.estimated_remaining_seconds == pytest.approx(40.0)
    assert rep.record.seconds_per_step is None  # no steps
