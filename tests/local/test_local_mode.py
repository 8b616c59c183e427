"""Local mode end to end: `refinery run` takes the example pipeline to Succeeded, every stage
learns what it trains for, the operator's metrics are served on localhost while it runs, the
summary plots every stage's curves, and a killed run resumes from its last complete checkpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from refinery.api.run import CHECKPOINT_MARKER
from refinery_operator.local.summary import read_history

from .conftest import EXAMPLE, REPO, URL_LINE, phase_of, refinery, stage_of, stage_sample

pytestmark = pytest.mark.slow


def test_example_pipeline_succeeds(example_run):
    code, out, status, _, _ = example_run
    assert code == 0, out
    assert status["phase"] == "Succeeded"
    assert [s["name"] for s in status["stages"]] == ["pretrain", "sft", "reward", "rlhf", "eval", "export"]
    assert [s["phase"] for s in status["stages"]] == ["Succeeded"] * 6
    assert "pipeline Succeeded" in out and "STAGE" in out  # the summary table


def test_every_stage_learns(example_run):
    _, out, status, _, _ = example_run
    for name in ("pretrain", "sft"):
        metrics = stage_of(status, name)["metrics"]
        assert metrics["evalLoss"] < metrics["initialEvalLoss"], (name, metrics)
    assert stage_of(status, "reward")["metrics"]["evalAccuracy"] >= 0.8
    rlhf = stage_of(status, "rlhf")["metrics"]
    assert rlhf["meanReward"] > rlhf["baselineMeanReward"], rlhf
    assert "kl" in rlhf


def test_every_stage_reports_its_throughput_and_no_mfu_on_a_cpu(example_run):
    _, out, status, _, _ = example_run
    for stage in status["stages"]:
        if stage["name"] in ("eval", "export"):  # they train nothing
            assert "tokensPerSecond" not in stage["metrics"], stage["name"]
            continue
        assert stage["metrics"]["tokensPerSecond"] > 0 and "mfu" not in stage["metrics"], stage["name"]
    assert "tokensPerSecond" in out  # a column of the summary table


def test_the_time_left_is_estimated_while_stages_run_and_zero_once_done(example_run):
    _, _, status, _, scrapes = example_run
    sft_left = [stage_sample(s, "refinery_stage_eta_seconds", "sft") for s in scrapes if phase_of(s, "sft", "sft") == "Running"]
    assert any(left is not None and left > 0 for left in sft_left), sft_left
    pipeline_left = ("refinery_pipeline_eta_seconds", frozenset({"namespace": "local", "pipeline": "tiny-chat"}.items()))
    assert any((s.get(pipeline_left) or 0) > 0 for s in scrapes)
    assert status.get("estimatedRemainingSeconds") is None and status.get("eta") is None  # it has ended
    for stage in status["stages"]:
        assert stage["estimatedRemainingSeconds"] == 0.0, stage["name"]
        if stage["name"] not in ("eval", "export"):  # the stages with steps have a measured pace
            assert stage["secondsPerStep"] > 0, stage["name"]


def test_outputs_are_handed_from_stage_to_stage(example_run):
    _, _, status, workdir, _ = example_run
    root = workdir / "tiny-chat"
    for name in ("pretrain", "sft", "reward", "rlhf"):
        stage = stage_of(status, name)
        assert stage["output"] == str(root / name / "model")
        assert (root / name / "model" / "config.json").exists()
        assert json.loads((root / name / "result.json").read_text())["metrics"] == stage["metrics"]
        assert stage["checkpoints"] >= 1 and stage["lastCheckpoint"]["step"] >= 1
    assert stage_of(status, "sft")["inputs"] == {"model": str(root / "pretrain" / "model")}
    assert stage_of(status, "rlhf")["inputs"] == {
        "model": str(root / "sft" / "model"), "rewardModel": str(root / "reward" / "model"),
    }


def test_a_second_run_keeps_finished_stages(example_run):
    _, _, status, workdir, _ = example_run
    proc = refinery("run", str(EXAMPLE), "--workdir", str(workdir), "--quiet", stdout=subprocess.PIPE, text=True)
    proc.communicate(timeout=120)
    again = json.loads((workdir / "tiny-chat" / "status.json").read_text())
    assert proc.returncode == 0
    assert [s["attempt"] for s in again["stages"]] == [s["attempt"] for s in status["stages"]]


STAGES = {"pretrain": "pretrain", "sft": "sft", "reward": "reward", "rlhf": "rlhf"}  # name: type


def test_the_operator_metrics_are_served_on_localhost_during_the_run(example_run):
    _, out, _, _, scrapes = example_run
    assert len(URL_LINE.findall(out)) == 1  # printed once
    assert len(scrapes) >= 10, out

    # The stages, labelled as the operator labels them (type too), the waiting ones included.
    assert any(phase_of(s, "pretrain", "pretrain") == "Running" and phase_of(s, "rlhf", "rlhf") == "Pending"
               for s in scrapes)
    last = scrapes[-1]
    assert all(phase_of(last, name, type_) is not None for name, type_ in STAGES.items()), last
    pipeline_running = ("refinery_pipeline_phase", frozenset({"namespace": "local", "pipeline": "tiny-chat",
                                                             "phase": "Running"}.items()))
    assert any(s.get(pipeline_running) == 1.0 for s in scrapes)

    # Live: sft was seen running part-way, its step between 0 and the end.
    steps = [stage_sample(s, "refinery_stage_step", "sft") for s in scrapes if phase_of(s, "sft", "sft") == "Running"]
    assert any(step is not None and 0 < step < 500 for step in steps), steps

    # By the last scrape pretrain had long finished: the gauges follow the status.
    assert phase_of(last, "pretrain", "pretrain") == "Succeeded"
    assert stage_sample(last, "refinery_stage_step", "pretrain") == 150
    assert stage_sample(last, "refinery_stage_progress_ratio", "pretrain") == 1.0
    assert stage_sample(last, "refinery_stage_checkpoints", "pretrain") == 3


def test_the_summary_plots_every_stages_curves(example_run):
    _, out, _, workdir, _ = example_run
    png = workdir / "tiny-chat" / "summary.png"
    assert f"plots: {png}" in out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height) == (1280, 1140)  # five panels (the export draws none), two per row, at 100 dpi
    assert len(data) > 30_000  # curves and text, not an empty canvas

    # What the panels are drawn from: every training log of every stage, at full resolution.
    root = workdir / "tiny-chat"
    assert [step for step, _ in read_history(root / "pretrain")["loss"]] == [25, 50, 75, 100, 125, 150]
    assert [step for step, _ in read_history(root / "sft")["loss"]] == list(range(50, 501, 50))
    assert [step for step, _ in read_history(root / "reward")["eval_accuracy"]] == [0, 300]
    rlhf = read_history(root / "rlhf")
    assert [step for step, _ in rlhf["reward"]] == [step for step, _ in rlhf["kl"]] == [25, 50, 75, 100, 125, 150]


def test_a_taken_metrics_port_does_not_fail_the_run(example_run):
    _, _, _, workdir, _ = example_run
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = refinery("run", str(EXAMPLE), "--workdir", str(workdir), "--quiet", "--metrics-port", str(port),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    # The example's eval stage warns of its circular judge on every run; the port is the only other warning.
    warnings = [line for line in out.splitlines() if "warning" in line.lower() and "(CircularJudge)" not in line]
    assert len(warnings) == 1 and f"port {port}" in warnings[0], out
    served = URL_LINE.findall(out)
    assert len(served) == 1 and int(served[0][1]) != port  # a free port instead
    assert "pipeline Succeeded" in out


def pretrain_only(tmp_path: Path, max_steps: int, save_steps: int) -> Path:
    manifest = yaml.safe_load(EXAMPLE.read_text())
    stage = manifest["spec"]["stages"][0]
    stage["training"].update(maxSteps=max_steps, saveSteps=save_steps)
    manifest["spec"]["stages"] = [stage]
    manifest["spec"].pop("export", None)  # the example exports rlhf, which this pipeline lacks
    path = tmp_path / "pretrain-only.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def complete_checkpoints(stage_dir: Path) -> list[int]:
    return sorted(int(m.parent.name.split("-")[1]) for m in stage_dir.glob(f"attempt-*/checkpoints/checkpoint-*/{CHECKPOINT_MARKER}"))


def test_killed_run_resumes_from_the_last_complete_checkpoint(tmp_path):
    manifest = pretrain_only(tmp_path, max_steps=400, save_steps=20)
    workdir = tmp_path / "work"
    stage_dir = workdir / "tiny-chat" / "pretrain"
    args = ("run", str(manifest), "--workdir", str(workdir), "--data-root", str(EXAMPLE.parent), "--quiet")
    proc = refinery(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while len(complete_checkpoints(stage_dir)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole run, as a crashed machine would
    proc.wait()
    done = complete_checkpoints(stage_dir)
    assert len(done) >= 2, "the run ended before checkpointing twice"
    assert max(done) < 400, "the run finished before it could be killed"

    # A partial write newer than any complete checkpoint: it must never be resumed from.
    partial = stage_dir / "attempt-1" / "checkpoints" / f"checkpoint-{max(done) + 10}"
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"truncated")

    proc = refinery(*args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    stage = stage_of(json.loads((workdir / "tiny-chat" / "status.json").read_text()), "pretrain")
    assert stage["phase"] == "Succeeded" and stage["attempt"] == 2
    assert stage["resumedFrom"]["step"] == max(done)
    assert stage["resumedFrom"]["path"].endswith(f"attempt-1/checkpoints/checkpoint-{max(done)}")
    assert stage["step"] == 400


@pytest.mark.parametrize(
    ("what", "data", "expected", "reason"),
    [
        ("missing file", None, "no-such-file.txt", "SourceError"),
        ("wrong columns", '{"prompt": "2+2=", "answer": "4"}\n', "completion", "BadData"),
    ],
)
def test_bad_data_fails_the_pipeline_before_any_stage_with_a_clear_message(tmp_path, what, data, expected, reason):
    manifest = yaml.safe_load(EXAMPLE.read_text())
    stage = manifest["spec"]["stages"][1]  # sft, from pretrain: start it from a config instead
    stage.pop("from")
    stage["model"] = manifest["spec"]["stages"][0]["model"]
    stage["retries"] = {"application": 0}
    if data is None:
        stage["data"] = {"path": "no-such-file.txt"}
    else:
        (tmp_path / "bad.jsonl").write_text(data * 20)
        stage["data"] = {"path": "bad.jsonl"}
    manifest["spec"]["stages"] = [stage]
    manifest["spec"].pop("export", None)
    path = tmp_path / "bad-data.yaml"
    path.write_text(yaml.safe_dump(manifest))

    proc = refinery("run", str(path), "--workdir", str(tmp_path / "work"), "--quiet",
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    # Caught by the inputs check before any stage starts: no stage process ever ran.
    status = json.loads((tmp_path / "work" / "tiny-chat" / "status.json").read_text())
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == reason and expected in failed["message"], failed
    assert status["phase"] == "Failed"
    assert not list((tmp_path / "work" / "tiny-chat" / ".runs").glob("sft-*.log"))
    assert expected in out  # the runner tells the user too


# ----------------------------------------------------------------------------------------------
# the evaluated assistant: eval stage, export, chat

ROOT_STAGES = ("pretrain", "sft", "reward", "rlhf", "eval")


def example_data():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_example_data", REPO / "scripts" / "make_example_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_eval_stage_scores_sft_and_rlhf_side_by_side(example_run):
    _, out, status, workdir, _ = example_run
    scores = stage_of(status, "eval")["metrics"]
    for model in ("sft", "rlhf"):
        assert {f"{model}.{k}" for k in ("exactMatch", "contains", "meanReward", "winRate", "emptyFraction")} <= set(scores)
    # RLHF fixed what the sloppy demonstrations taught, on prompts no stage trained on; the gate held.
    assert scores["rlhf.exactMatch"] > scores["sft.exactMatch"] and scores["rlhf.meanReward"] > scores["sft.meanReward"]
    assert scores["rlhf.winRate"] > 0.5 and scores["rlhf.emptyFraction"] == 0.0
    table = out[out.index("\neval (held out)\n") + 1:].splitlines()
    # rlhf was optimised against the judge: its meanReward and winRate are marked, not evidence (CircularJudge).
    assert table[1].split()[:5] == ["MODEL", "exactMatch", "contains", "meanReward*", "winRate*"]
    assert "* rlhf.meanReward, rlhf.winRate: judged by the reward model rlhf was optimised against (reward)" in table
    assert "warning (CircularJudge): eval stage 'eval' judges 'rlhf' with reward model 'reward'" in out
    circular = next(c for c in status["conditions"] if c["type"] == "CircularJudge")
    assert (circular["status"], circular["reason"]) == ("True", "CircularJudge")
    footnotes = json.loads(Path(stage_of(status, "eval")["output"]).read_text())["_footnotes"]
    assert set(footnotes) == {"rlhf.meanReward", "rlhf.winRate"}
    assert [row.split()[0] for row in table[2:4]] == ["sft", "rlhf"]
    assert f"{scores['rlhf.exactMatch']:.4f}" in table[3]
    assert "chat with it: refinery chat " in out and "--stage rlhf" in out
    assert "RewardHacking" in {c["type"] for c in status["conditions"]}
    assert next(c for c in status["conditions"] if c["type"] == "RewardHacking")["status"] == "False"


def test_the_export_loads_and_its_card_lists_every_stage_and_metric(example_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, _, status, workdir, _ = example_run
    exported = workdir / "exports" / "tiny-chat"
    assert stage_of(status, "export")["output"] == str(exported)
    assert (exported / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(exported)
    tokenizer = AutoTokenizer.from_pretrained(exported)
    assert tokenizer.chat_template and model.config.num_hidden_layers == 2
    card = (exported / "README.md").read_text()
    for name in ROOT_STAGES:
        assert f"`{name}`" in card
        for metric in stage_of(status, name)["metrics"]:
            assert metric.partition(".")[2 if name == "eval" else 0] in card, (name, metric)
    assert "ghcr.io/refinery-dev/refinery-trainer:0.1.0" in card and "Refinery 0.1.0" in card
    assert "sha256 `" in card and "`pretrain` → `sft` → `reward` → `rlhf`" in card


def test_refinery_export_copies_the_model_to_s3(example_run, tmp_path):
    from transformers import AutoModelForCausalLM

    from tests.s3server import start_moto_server

    _, _, _, workdir, _ = example_run
    server = start_moto_server()
    try:
        env = server.env()
        client = server.client()
        client.create_bucket(Bucket="models")
        proc = subprocess.run([sys.executable, "-m", "refinery_operator.cli", "export", str(workdir / "tiny-chat"),
                               "--stage", "rlhf", "--to", "s3://models/tiny-chat/rlhf"],
                              env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "to s3://models/tiny-chat/rlhf" in proc.stdout
        keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="models")["Contents"])
        assert keys == sorted(f"tiny-chat/rlhf/{p.name}" for p in (workdir / "exports" / "tiny-chat").iterdir())
        for key in keys:
            client.download_file("models", key, str(tmp_path / key.rsplit("/", 1)[1]))
    finally:
        server.stop()
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.model_type == "llama"
    assert "## Evaluation (stage `eval`)" in (tmp_path / "README.md").read_text()


def test_refinery_export_refuses_a_stage_without_a_model(example_run, tmp_path):
    _, _, _, workdir, _ = example_run
    proc = subprocess.run([sys.executable, "-m", "refinery_operator.cli", "export", str(workdir / "tiny-chat"),
                           "--stage", "reward", "--to", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "is a reward stage, not a language model" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_chat_prompt_answers_from_the_rlhf_model(example_run):
    _, _, _, workdir, _ = example_run
    checker = example_data()
    prompts = [json.loads(line)["prompt"] for line in (REPO / "examples/data/answers_eval.jsonl").read_text().splitlines()]
    for prompt in prompts[:3]:
        proc = subprocess.run([sys.executable, "-m", "refinery_operator.cli", "chat", str(workdir / "tiny-chat"),
                               "--stage", "rlhf", "--prompt", prompt], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert checker.is_correct(prompt, proc.stdout), (prompt, proc.stdout)


def test_chat_refuses_an_incomplete_model_folder(example_run, tmp_path):
    _, _, _, workdir, _ = example_run
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "config.json").write_text((workdir / "tiny-chat" / "rlhf" / "model" / "config.json").read_text())
    proc = subprocess.run([sys.executable, "-m", "refinery_operator.cli", "chat", str(broken), "--prompt", "hi"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "is not a complete model folder: no weights (*.safetensors), tokenizer" in proc.stderr


def test_interactive_chat_through_a_pseudo_terminal(example_run):
    import pty
    import select

    _, _, _, workdir, _ = example_run
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "refinery_operator.cli", "chat", str(workdir / "tiny-chat")],
                            stdin=secondary, stdout=secondary, stderr=secondary, close_fds=True)
    os.close(secondary)
    seen = b""

    def read_until(marker: bytes, count: int, timeout: float = 120) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while seen.count(marker) < count and time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 1)
            if ready:
                try:
                    seen += os.read(primary, 4096)
                except OSError:
                    break
        assert seen.count(marker) >= count, seen.decode(errors="replace")

    try:
        read_until(b"you> ", 1)
        os.write(primary, b"What does the sleepy cow say?\n")
        read_until(b"you> ", 2)
        os.write(primary, b"What does the owl say?\n")
        read_until(b"you> ", 3)
        os.write(primary, b"/exit\n")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(primary)
    text = seen.decode(errors="replace").replace("\r", "")
    answers = [line.removeprefix("model>").strip() for line in text.splitlines() if line.startswith("model>")]
    assert answers == ["moo", "hoot"], text


def readme_run_output() -> list[str]:
    """The lines of the README's block that shows what `refinery run examples/tiny-chat.yaml` printed."""
    text = (REPO / "README.md").read_text()
    start = text.index("```\npipeline Succeeded\n") + 4
    return text[start:text.index("```", start)].splitlines()


# Throughput is the machine's, not the pipeline's: the README's are from its own run, on its own machine.
MACHINE_FIGURES = ("tokensPerSecond", "mfu")
SCORES = ("exactMatch", "contains", "winRate", "emptyFraction", "truncatedFraction", "evalAccuracy",
          "meanCompletionLength")
REWARDS = ("meanReward", "baselineMeanReward")
NEAR_ZERO_LOSS = 0.01


def same_order(readme: float, run: float, metric: str) -> bool:
    """A figure of the README's run against this machine's run of the same example.

    The same seed gives other floats on another CPU (AVX2, AVX512 or no vector kernels, Intel or
    AMD, arm64: each sums in its own order), and a few hundred steps of a tiny model amplify them:
    the README's "Figures on other machines" lists the spread measured. What holds everywhere is
    the figure's size, not its digits: a score within 0.15, a reward (spanning about ±10 here)
    within 3, a loss within a factor of 10 — or both under 0.01, near zero, where the reward
    model's ends (6e-5 to 7e-4 seen) and a ratio means nothing.
    """
    name = metric.split(".")[-1]
    if name in SCORES:
        return abs(readme - run) <= 0.15
    if name in REWARDS:
        return abs(readme - run) <= 3.0
    if readme < NEAR_ZERO_LOSS and run < NEAR_ZERO_LOSS:
        return readme >= 0 and run >= 0
    if readme <= 0 or run <= 0:
        return False
    return 0.1 <= run / readme <= 10


def test_the_readme_figures_are_the_examples(example_run):
    """The README's quick-start output is what the example prints on any machine: the same table
    (stages, phases, steps, attempts, checkpoints: all fixed by the manifest), every stage
    learning what it trains, and every figure of the same size as the README's run — not its
    digits, which depend on the CPU (see `same_order`)."""
    _, out, status, _, _ = example_run
    lines = readme_run_output()
    header = lines[1].split()
    assert header[:5] == ["STAGE", "PHASE", "STEPS", "ATTEMPT", "CKPTS"]
    printed = out[out.index("pipeline Succeeded"):].splitlines()
    assert printed[1].split() == header, "the printed table has the README's columns"
    rows = [row.split() for row in lines[2:2 + 6]]
    assert [r[0] for r in rows] == [s["name"] for s in status["stages"]] == [r.split()[0] for r in printed[2:8]]
    for cells in rows:
        stage = stage_of(status, cells[0])
        assert cells[1] == stage["phase"] == "Succeeded", cells
        assert int(cells[2]) == (stage.get("step") or 0) and int(cells[3]) == stage["attempt"] == 1, cells
        assert int(cells[4]) == stage.get("checkpoints", 0), cells
        for name, cell in zip(header[5:], cells[5:]):
            assert (cell == "-") == (name not in stage.get("metrics", {})), (cells[0], name, "printed for other stages")
            if cell != "-" and name not in MACHINE_FIGURES:
                run = stage["metrics"][name]
                assert same_order(float(cell), run, name), (cells[0], name, cell, run)
    scores = stage_of(status, "eval")["metrics"]
    at = lines.index("eval (held out)")
    columns = lines[at + 1].split()
    assert printed[printed.index("eval (held out)") + 1].split() == columns
    for row in lines[at + 2:at + 4]:
        model, *cells = row.split()
        for name, cell in zip((c.rstrip("*") for c in columns[1:]), cells):  # `*`: a circular judge's score
            assert same_order(float(cell), scores[f"{model}.{name}"], name), (model, name, cell)
    # The prose quotes the same run.
    text = (REPO / "README.md").read_text()
    prose = re.search(r"exact match (\d\.\d\d) → (\d\.\d\d), mean reward (-?\d+\.\d\d) → (-?\d+\.\d\d), "
                      r"win rate (\d\.\d\d)", text)
    assert prose, "the quick start's sentence of eval figures"
    for figure, key in zip(prose.groups(), ("sft.exactMatch", "rlhf.exactMatch", "sft.meanReward", "rlhf.meanReward",
                                            "rlhf.winRate")):
        assert same_order(float(figure), scores[key], key), (key, figure, scores[key])
    rlhf = stage_of(status, "rlhf")["metrics"]
    trained = re.search(r"held-out mean reward (-?\d+\.\d\d) → (-?\d+\.\d\d)", text)
    assert trained and same_order(float(trained.group(1)), rlhf["baselineMeanReward"], "baselineMeanReward") \
        and same_order(float(trained.group(2)), rlhf["meanReward"], "meanReward")


def test_every_stage_of_the_example_learns_what_it_trains(example_run):
    """What the README's story says, checked on this machine's own figures, whatever its CPU: the
    language models' held-out loss falls by more than half, the reward model ranks held-out pairs
    right, RLHF raises its held-out reward well above the sft policy's, and the rlhf model answers
    the eval stage's held-out prompts right at least as often as the sft model (the export's gate)
    and nearly always, never with an empty or cut-off answer."""
    _, _, status, _, _ = example_run
    for name in ("pretrain", "sft", "reward"):
        metrics = stage_of(status, name)["metrics"]
        assert metrics["evalLoss"] < metrics["initialEvalLoss"] / 2, (name, metrics)
    assert stage_of(status, "reward")["metrics"]["evalAccuracy"] >= 0.9
    rlhf = stage_of(status, "rlhf")["metrics"]
    assert rlhf["meanReward"] >= rlhf["baselineMeanReward"] + 2.0, rlhf
    assert 0 < rlhf["kl"] < 1.0, rlhf
    scores = stage_of(status, "eval")["metrics"]
    assert scores["rlhf.exactMatch"] >= max(scores["sft.exactMatch"], 0.9), scores
    assert scores["rlhf.meanReward"] > scores["sft.meanReward"] and scores["rlhf.winRate"] > 0.5, scores
    for model in ("sft", "rlhf"):
        assert scores[f"{model}.emptyFraction"] == 0 and scores[f"{model}.truncatedFraction"] == 0, scores


@pytest.mark.skipif(sys.platform != "linux", reason="warm starts are local mode's default on Linux only")
def test_the_example_stages_start_warm(example_run):
    """Every stage process of `refinery run` is a fork of local mode's fork server, which imported the
    training libraries once (local/launcher.py); the figures above are those warm processes'."""
    _, _, status, workdir, _ = example_run
    for stage in status["stages"]:
        log = workdir / "tiny-chat" / ".runs" / f"{stage['name']}-1.log"
        first = log.read_text().splitlines()[0]
        assert first == "refinery-train: warm start, forked from local mode's fork server", (stage["name"], first)
