"""Local mode's /metrics endpoint, without training: localhost only, the port rule, a taken port."""

from __future__ import annotations

import io
import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge

from refinery_operator import cli, metrics
from refinery_operator.local import runner
from refinery_operator.local.serve import HOST, serve_metrics

REPO = Path(__file__).resolve().parents[2]


def registry_with_a_sample() -> CollectorRegistry:
    registry = CollectorRegistry()
    Gauge("refinery_test_value", "A value.", registry=registry).set(42)
    return registry


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def test_metrics_are_served_on_localhost_only():
    out = io.StringIO()
    endpoint = serve_metrics(registry_with_a_sample(), free_port(), stream=out)
    try:
        assert endpoint.server.server_address[0] == "127.0.0.1"
        assert out.getvalue() == f"metrics: {endpoint.url}\n"  # printed once, no warning
        assert "refinery_test_value 42.0" in scrape(endpoint.url)
    finally:
        endpoint.close()


def test_a_taken_port_gives_one_warning_and_a_free_port():
    out = io.StringIO()
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        endpoint = serve_metrics(registry_with_a_sample(), port, stream=out)
        try:
            assert endpoint is not None and endpoint.port != port
            lines = out.getvalue().splitlines()
            assert len(lines) == 2 and lines[0].startswith("warning:") and str(port) in lines[0]
            assert lines[1] == f"metrics: http://127.0.0.1:{endpoint.port}/metrics"
            assert "refinery_test_value 42.0" in scrape(endpoint.url)
        finally:
            endpoint.close()


def test_port_none_is_off():
    out = io.StringIO()
    assert serve_metrics(registry_with_a_sample(), None, stream=out) is None
    assert out.getvalue() == ""


@pytest.mark.parametrize(("value", "ok"), [("0", True), ("9100", True), ("65536", False), ("-1", False), ("x", False)])
def test_the_metrics_port_flag(value, ok):
    parser = cli.build_parser()
    if ok:
        assert parser.parse_args(["run", "p.yaml", "--metrics-port", value]).metrics_port == int(value)
    else:
        with pytest.raises(SystemExit):
            parser.parse_args(["run", "p.yaml", "--metrics-port", value])


@pytest.mark.parametrize(("flag", "env", "port"), [
    (None, None, 8000),    # the operator's port
    (None, "9100", 9100),  # the variable, as the operator reads it
    (None, "0", None),     # off
    (9200, "9100", 9200),  # the flag wins
    (0, "9100", None),
])
def test_the_port_rule(flag, env, port, monkeypatch):
    if env is None:
        monkeypatch.delenv(metrics.PORT_ENV, raising=False)
    else:
        monkeypatch.setenv(metrics.PORT_ENV, env)
    assert cli.local_metrics_port(flag) == port


@pytest.mark.parametrize("value", ["eight thousand", "70000"])
def test_a_garbled_port_variable_is_an_error_before_anything_runs(value, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(metrics.PORT_ENV, value)
    code = cli.main(["run", str(REPO / "examples" / "tiny-chat.yaml"), "--workdir", str(tmp_path)])
    assert code == 2
    assert metrics.PORT_ENV in capsys.readouterr().err
    assert not (tmp_path / "tiny-chat").exists()


def test_stage_processes_never_get_local_modes_metrics_port(monkeypatch):
    """The trainer would serve its own metrics on the port the runner serves on."""
    assert runner.METRICS_PORT_ENV == metrics.PORT_ENV
    monkeypatch.setenv(metrics.PORT_ENV, "9100")
    monkeypatch.setenv("SOME_OTHER_SETTING", "kept")
    env = runner.trainer_environment()
    assert metrics.PORT_ENV not in env and env["SOME_OTHER_SETTING"] == "kept"
