"""The client's and the CLI verbs' behaviour that needs no cluster and no training: one-line errors
with their exit codes (a context that does not answer, an unknown context, a pipeline or stage
that does not exist, a stage without logs, a wait that times out or ends Failed), `refinery
describe` rendered from a recorded status (a local run of examples/tiny-chat.yaml), the typed
model's YAML round trip and offline checks, and `import refinery` staying light."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from refinery import Client, TrainingPipeline
from refinery.api.load import InvalidManifest, load_pipelines
from refinery.api.v1alpha1 import Failure, PipelineStatus
from refinery.client import PipelineEvent
from refinery.client.render import describe, pipelines_table
from refinery_operator.cli import main

REPO = Path(__file__).resolve().parents[2]
RECORDED = Path(__file__).parent / "data" / "tiny-chat-status.json"  # status.json of `refinery run examples/tiny-chat.yaml`
EXAMPLE = REPO / "examples" / "tiny-chat.yaml"


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def kubeconfig(tmp_path: Path) -> Path:
    """A kubeconfig whose only context points at a port nothing listens on."""
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dead",
        "clusters": [{"name": "dead", "cluster": {"server": f"https://127.0.0.1:{closed_port()}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "u", "namespace": "ml"}}],
    }))
    return path


def local_run(workdir: Path, status: dict | None = None, suspended: bool = False) -> None:
    """A local run's folder as Client.local leaves it, with no process behind it."""
    root = workdir / "tiny-chat"
    root.mkdir(parents=True)
    (root / "manifest.yaml").write_text(EXAMPLE.read_text())
    (root / "client.json").write_text(json.dumps({"suspended": suspended}))
    if status is not None:
        (root / "status.json").write_text(json.dumps(status))


def test_a_context_that_does_not_answer_exits_4_with_one_line(capsys, kubeconfig):
    code, out, err = run_cli(capsys, "get", "--kubeconfig", str(kubeconfig))
    assert (code, out) == (4, "")
    assert err.startswith("error: the API server of context dead (https://127.0.0.1:") and err.count("\n") == 1, err
    assert "Connection refused" in err


def test_an_unknown_context_or_kubeconfig_exits_4(capsys, kubeconfig, tmp_path):
    code, _, err = run_cli(capsys, "describe", "tp/x", "--kubeconfig", str(kubeconfig), "--context", "prod")
    assert code == 4 and err.startswith("error: cannot use context 'prod': ") and err.count("\n") == 1, err
    code, _, err = run_cli(capsys, "logs", "x", "sft", "--kubeconfig", str(tmp_path / "missing"))
    assert code == 4 and err.startswith(f"error: cannot use {tmp_path / 'missing'}: "), err


def test_a_pipeline_or_stage_that_does_not_exist_exits_3(capsys, tmp_path):
    code, out, err = run_cli(capsys, "describe", "tp/tiny-chat", "--local-workdir", str(tmp_path))
    assert (code, out, err) == (3, "", f"error: no pipeline 'tiny-chat' in the local work folder {tmp_path}\n")
    local_run(tmp_path)
    code, _, err = run_cli(capsys, "logs", "tiny-chat", "dpo", "--local-workdir", str(tmp_path))
    assert code == 3 and err == ("error: pipeline 'tiny-chat' has no stage 'dpo' (its stages: pretrain, sft, reward, "
                                 "rlhf, eval, export)\n")


def test_a_stage_without_logs_exits_5(capsys, tmp_path):
    local_run(tmp_path, {"phase": "Running", "stages": [{"name": "pretrain", "phase": "Running", "attempt": 1}]})
    code, _, err = run_cli(capsys, "logs", "tiny-chat", "sft", "--local-workdir", str(tmp_path))
    assert (code, err) == (5, "error: stage 'sft' of pipeline 'tiny-chat' has not started yet (no attempt, no log)\n")
    code, _, err = run_cli(capsys, "logs", "tiny-chat", "pretrain", "--local-workdir", str(tmp_path))
    assert code == 5 and err.startswith("error: stage 'pretrain' attempt 1 of pipeline 'tiny-chat' has no log"), err
    (tmp_path / "tiny-chat" / ".runs").mkdir()
    (tmp_path / "tiny-chat" / ".runs" / "pretrain-1.log").write_text("loading\nstep 1/150\n")
    assert run_cli(capsys, "logs", "tiny-chat", "pretrain", "--local-workdir", str(tmp_path)) == (0, "loading\nstep 1/150\n", "")


def test_wait_exits_6_on_timeout_and_1_on_another_end(capsys, tmp_path):
    local_run(tmp_path / "a", {"phase": "Running"}, suspended=True)  # suspended: nothing runs, nothing stopped
    code, _, err = run_cli(capsys, "wait", "tiny-chat", "--timeout", "1", "--local-workdir", str(tmp_path / "a"))
    assert (code, err) == (6, "error: pipeline 'tiny-chat' is still Suspended after 1s (waiting for Succeeded)\n")
    failed = {"phase": "Failed", "stages": [{"name": "sft", "phase": "Failed", "message": "loss became NaN at step 3"}]}
    local_run(tmp_path / "b", failed)
    code, _, err = run_cli(capsys, "wait", "tiny-chat", "--local-workdir", str(tmp_path / "b"))
    assert (code, err) == (1, "error: pipeline 'tiny-chat' is Failed, not Succeeded: stage 'sft' failed: loss became NaN at step 3\n")
    local_run(tmp_path / "c", {"phase": "Running"})  # no process behind it: the run stopped
    code, _, err = run_cli(capsys, "wait", "tiny-chat", "--local-workdir", str(tmp_path / "c"))
    assert code == 1 and err.startswith("error: the local run of 'tiny-chat' stopped before the pipeline finished"), err


def test_names_and_durations_as_kubectl_takes_them(capsys, tmp_path):
    local_run(tmp_path, {"phase": "Succeeded"})
    for name in ("tiny-chat", "tp/tiny-chat", "trainingpipelines.refinery.dev/tiny-chat"):
        assert run_cli(capsys, "wait", name, "--timeout", "1m30s", "--local-workdir", str(tmp_path))[0] == 0
    with pytest.raises(SystemExit) as exit_:
        main(["describe", "deploy/tiny-chat", "--local-workdir", str(tmp_path)])
    assert exit_.value.code == 2 and "not a TrainingPipeline" in capsys.readouterr().err


def test_help_lists_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for line in ("3  not found", "4  unreachable", "5  no logs", "6  timed out"):
        assert line in out


def recorded() -> TrainingPipeline:
    pipeline = load_pipelines(EXAMPLE)[0]
    meta = pipeline.metadata.model_copy(update={"namespace": "ml"})
    meta.__pydantic_extra__["creationTimestamp"] = "2026-12-06T02:50:00Z"
    return pipeline.model_copy(update={"status": PipelineStatus.model_validate_json(RECORDED.read_text()), "metadata": meta})


def test_describe_renders_a_recorded_status():
    pipeline = recorded()
    now = datetime(2026, 12, 6, 3, 20, tzinfo=timezone.utc)
    text = describe(pipeline, [PipelineEvent("Normal", "PipelineSucceeded", "all 6 stages succeeded", "2026-12-06T03:18:00Z")], now)
    sections = {part.split("\n", 1)[0]: part for part in text.split("\n\n")}
    assert sections["Name:       tiny-chat"].splitlines()[3].split() == ["Phase:", "Succeeded", "(6/6", "stages", "done)"]
    stages = [line.split()[:5] for line in sections["Stages:"].splitlines()[2:]]
    assert stages == [["pretrain", "pretrain", "Succeeded", "100%", "150/150"], ["sft", "sft", "Succeeded", "100%", "500/500"],
                      ["reward", "reward", "Succeeded", "100%", "300/300"], ["rlhf", "rlhf", "Succeeded", "100%", "150/150"],
                      ["eval", "eval", "Succeeded", "100%", "0"], ["export", "export", "Succeeded", "100%", "0"]]
    assert "  Ready          True    PipelineSucceeded" in sections["Conditions:"]
    assert "  rlhf: from sft, reward model reward (" in sections["Lineage:"]
    eval_rows = {line.split()[0]: line.split()[1] for line in sections["Eval:"].splitlines()[3:5]}
    assert sections["Eval:"].splitlines()[2].split()[:2] == ["MODEL", "exactMatch"] and eval_rows == {"sft": "0.6641", "rlhf": "1.0000"}
    assert "judged by the reward model rlhf was optimised against" in sections["Eval:"]
    assert sections["Events:"].splitlines()[2].split()[:3] == ["Normal", "PipelineSucceeded", "2m"]
    assert "Last failures:" not in text and "Sources:" not in text


def test_describe_shows_last_failures_and_get_the_printer_columns():
    pipeline = recorded()
    failure = Failure(class_="Application", reason="NanLoss", message="loss became NaN at step 3", attempt=2)
    pipeline.status.stages[1] = pipeline.status.stages[1].model_copy(update={"last_failure": failure, "phase": "Failed"})
    text = describe(pipeline)
    assert "Last failures:\n  sft attempt 2: Application NanLoss: loss became NaN at step 3\n" in text
    table = pipelines_table([pipeline], datetime(2026, 12, 6, 3, 20, tzinfo=timezone.utc)).splitlines()
    assert table[0].split() == ["NAME", "STAGE", "PHASE", "PROGRESS", "CKPT-STEP", "CKPT-AGE", "ETA", "AGE"]
    assert table[1].split() == ["tiny-chat", "Succeeded", "6/6", "30m"]


def test_pipelines_built_in_python_round_trip_through_yaml_and_are_checked_offline():
    pipeline = load_pipelines(EXAMPLE)[0]
    assert TrainingPipeline.from_yaml(pipeline.to_yaml()) == pipeline
    assert "status" not in yaml.safe_load(pipeline.to_yaml())
    broken = pipeline.model_copy(deep=True)
    broken.spec.stages[3].reward_model = "nope"
    with pytest.raises(InvalidManifest) as err:
        broken.check()
    assert "spec.stages[3].rewardModel: no stage named 'nope'" in err.value.problems
    with pytest.raises(InvalidManifest):  # and apply refuses it before it reaches a backend
        Client(backend=object()).apply(broken)


def test_import_refinery_loads_no_kubernetes_client_nor_tqdm():
    code = "import sys, refinery; from refinery import Client, TrainingPipeline; print(sorted(m for m in ('kubernetes', 'tqdm', 'kopf', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]"


def test_local_logs_follow_until_the_attempt_ends(tmp_path):
    """`logs(follow=True)` yields lines as they are written and returns once the attempt is over
    (here: the stage succeeded), while the run's process lives. The process stands in for `refinery run`
    (the client knows a live run by its pid and command line)."""
    import threading
    import time

    local_run(tmp_path, {"phase": "Running", "stages": [{"name": "pretrain", "phase": "Running", "attempt": 1}]})
    root = tmp_path / "tiny-chat"
    (root / ".runs").mkdir()
    log = root / ".runs" / "pretrain-1.log"
    log.write_text("loading\n")
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "refinery_operator.cli"])
    try:
        (root / "client.json").write_text(json.dumps({"suspended": False, "pid": stand_in.pid}))

        def train():
            for step in (1, 2):
                time.sleep(0.3)
                with open(log, "a") as out:
                    out.write(f"step {step}/2\n")
            time.sleep(0.3)
            (root / "status.json").write_text(json.dumps({"phase": "Succeeded", "stages": [
                {"name": "pretrain", "phase": "Succeeded", "attempt": 1}]}))

        writer = threading.Thread(target=train)
        started = time.monotonic()
        writer.start()
        lines = list(Client.local(tmp_path).logs("tiny-chat", "pretrain", follow=True))
        writer.join()
        assert lines == ["loading", "step 1/2", "step 2/2"]
        assert time.monotonic() - started >= 0.9  # it waited for the lines, not just read what was there
    finally:
        stand_in.kill()
        stand_in.wait()


def test_a_local_name_that_is_not_a_resource_name_reaches_nothing_outside_the_work_folder(tmp_path):
    from refinery.client import Client, NotFound

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "manifest.yaml").write_text("kept: true\n")
    client = Client.local(workdir=tmp_path / "runs")
    for name in ("../victim", "/tmp", "Victim"):
        with pytest.raises(NotFound, match="not a pipeline name"):
            client.delete(name)
    assert (victim / "manifest.yaml").read_text() == "kept: true\n"
