"""refinery-train as a user meets it: invalid configs, bad data, and what a failure leaves behind."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from refinery_trainer import cli

from .conftest import TINY_MODEL, read_json, sft_rows, stage_run, write_config, write_jsonl


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "refinery_trainer.cli", *args], capture_output=True, text=True,
                          timeout=120)


def pretrain_run(workspace, path="data/corpus.txt", **data):
    return stage_run(workspace, "pretrain", "pretrain", data={"path": path, **data}, model=TINY_MODEL)


def sft_run(workspace, path="data/sft.jsonl"):
    return stage_run(workspace, "sft", "sft", data={"path": path}, from_="pretrain",
                     initModel=str(workspace / "p" / "pretrain" / "model"))


# ---- invalid config: exit 2, one message, no traceback ------------------------------------------


def test_invalid_config_exits_2_with_the_field_named(workspace):
    run = pretrain_run(workspace)
    run["stage"]["training"]["maxSteps"] = 0
    run["stage"]["trainng"] = {}  # misspelt field
    proc = run_cli("run", "--config", str(write_config(workspace / "bad.yaml", run)))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "stage.training.maxSteps" in proc.stderr and "stage.trainng" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("content, expected", [
    (None, "cannot read config"),
    ("stage: [unclosed", "not valid YAML/JSON"),
    ("- a list", "expected a mapping"),
])
def test_unreadable_config_exits_2(tmp_path, capsys, content, expected):
    path = tmp_path / "run.yaml"
    if content is not None:
        path.write_text(content)
    assert cli.main(["run", "--config", str(path)]) == cli.EXIT_INVALID_CONFIG
    assert expected in capsys.readouterr().err


def test_check_and_help_never_import_torch(workspace):
    config = write_config(workspace / "ok.yaml", pretrain_run(workspace))
    code = textwrap.dedent(f"""
        import sys
        from refinery_trainer import cli
        assert cli.main(["check", "--config", {str(config)!r}]) == 0
        try:
            cli.main(["--help"])
        except SystemExit:
            pass
        heavy = sorted(m for m in ("torch", "transformers", "trl", "datasets", "kubernetes") if m in sys.modules)
        print("HEAVY", heavy)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    assert "valid pretrain stage 'pretrain'" in proc.stdout


# ---- bad data: exit 1, one message naming file/line/field, progress Failed ------------------


def assert_failed_with(workspace, stage: str, capsys, *needles: str, reason: str = "BadData") -> dict:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err
    progress = read_json(workspace / "p" / stage / "progress.json")
    assert progress["phase"] == "Failed" and progress["failureReason"] == reason
    for needle in needles:
        assert needle in progress["message"]
    return progress


def test_missing_dataset_file(workspace, capsys, _termination_log):
    config = write_config(workspace / "run.yaml", pretrain_run(workspace, path="data/nowhere.txt"))
    assert cli.main(["run", "--config", str(config)]) == cli.EXIT_FAILED
    assert_failed_with(workspace, "pretrain", capsys, str(workspace / "data" / "nowhere.txt"), "not found")
    message = json.loads(_termination_log.read_text())
    assert message["phase"] == "Failed" and message["reason"] == "BadData" and "nowhere.txt" in message["message"]


def test_dataset_missing_a_column(workspace, capsys):
    rows = sft_rows(20)
    del rows[13]["completion"]
    write_jsonl(workspace / "data" / "sft.jsonl", rows)
    config = write_config(workspace / "run.yaml", sft_run(workspace))
    assert cli.main(["run", "--config", str(config)]) == cli.EXIT_FAILED
    assert_failed_with(workspace, "sft", capsys, "sft.jsonl line 14", "'completion'", "data.promptField")


def test_dataset_with_a_wrong_text_field(workspace, capsys):
    write_jsonl(workspace / "data" / "docs.jsonl", [{"body": "alice likes the cat."}] * 10)
    config = write_config(workspace / "run.yaml", pretrain_run(workspace, path="data/docs.jsonl"))
    assert cli.main(["run", "--config", str(config)]) == cli.EXIT_FAILED
    assert_failed_with(workspace, "pretrain", capsys, "docs.jsonl line", "missing field 'text'", "data.textField")


def test_malformed_json_line_fails_without_traceback(workspace):
    path = write_jsonl(workspace / "data" / "sft.jsonl", sft_rows(10))
    lines = path.read_text().splitlines()
    lines[6] = lines[6][:-3]  # truncated object on line 7
    path.write_text("\n".join(lines) + "\n")
    proc = run_cli("run", "--config", str(write_config(workspace / "run.yaml", sft_run(workspace))))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "sft.jsonl line 7: malformed JSON" in proc.stderr
    progress = read_json(workspace / "p" / "sft" / "progress.json")
    assert progress["phase"] == "Failed" and progress["failureReason"] == "BadData"
    assert "line 7" in progress["message"]


def test_missing_init_model_is_a_bad_model(workspace, capsys):
    write_jsonl(workspace / "data" / "sft.jsonl", sft_rows(10))
    config = write_config(workspace / "run.yaml", sft_run(workspace))
    assert cli.main(["run", "--config", str(config)]) == cli.EXIT_FAILED
    assert_failed_with(workspace, "sft", capsys, "not a saved model", reason="BadModel")


def test_termination_message_only_when_its_folder_is_writable(tmp_path, monkeypatch):
    monkeypatch.setenv("REFINERY_TERMINATION_LOG", str(tmp_path / "absent" / "termination-log"))
    assert cli.write_termination_message("x") is False
    target = tmp_path / "termination-log"
    monkeypatch.setenv("REFINERY_TERMINATION_LOG", str(target))
    assert cli.write_termination_message("é" * 5000) is True
    assert len(target.read_bytes()) == cli.TERMINATION_LOG_LIMIT


def test_default_termination_log_only_when_the_kubelet_made_it(tmp_path, monkeypatch):
    monkeypatch.delenv("REFINERY_TERMINATION_LOG")
    monkeypatch.setattr(cli, "TERMINATION_LOG", str(tmp_path / "termination-log"))
    assert cli.write_termination_message("x") is False and not (tmp_path / "termination-log").exists()
    (tmp_path / "termination-log").touch()
    assert cli.write_termination_message("x") is True


def test_corpus_too_small_for_one_block(workspace, capsys):
    (workspace / "data").mkdir(parents=True)
    (workspace / "data" / "corpus.txt").write_text("alice likes the cat.\n\nbob sees the dog.\n")
    config = write_config(workspace / "run.yaml", pretrain_run(workspace))
    assert cli.main(["run", "--config", str(config)]) == cli.EXIT_FAILED
    assert_failed_with(workspace, "pretrain", capsys, "seqLen")
