"""Wrong data fails every stage type the same way: exit 1, no traceback, reason BadData (an
application failure), and a message naming the file, the line (or parquet row) and the field.
The data is checked before any model is loaded, so these run in a fraction of a second."""

from __future__ import annotations

import json

import pytest

from refinery_trainer import cli

from .conftest import read_json, stage_run, write_config

PREFERENCE = {"prompt": "What does the cow say?", "chosen": " moo", "rejected": " baa"}
ROWS = {
    "sft": {"prompt": "What does the cow say?", "completion": " moo"},
    "reward": PREFERENCE,
    "dpo": PREFERENCE,
    "rlhf": {"prompt": "What does the cow say?"},
}
CHAT = {"messages": [{"role": "user", "content": "What does the cow say?"}, {"role": "assistant", "content": "moo"}]}


@pytest.fixture(autouse=True)
def _own_termination_log(tmp_path, monkeypatch):
    """Failures here must not overwrite the session's termination log, which other tests read."""
    monkeypatch.setenv("REFINERY_TERMINATION_LOG", str(tmp_path / "termination-log"))


def run_stage(workspace, type: str, path: str) -> dict:
    """Run a `type` stage on `path`; it must fail with BadData. Its progress record."""
    run = stage_run(workspace, type, type, data={"path": path}, from_="init", initModel=str(workspace / "no-model"))
    if type == "rlhf":
        run["rewardModel"] = str(workspace / "no-rm")
        run["stage"]["rewardModel"] = "rm"
    assert cli.main(["run", "--config", str(write_config(workspace / "run.yaml", run))]) == cli.EXIT_FAILED
    progress = read_json(workspace / "p" / type / "progress.json")
    assert progress["phase"] == "Failed" and progress["failureReason"] == "BadData", progress
    return progress


def write_lines(path, rows: list) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("type", ["sft", "reward", "dpo", "rlhf"])
def test_missing_field_names_file_line_and_field(workspace, capsys, type):
    rows = [ROWS[type]] * 6
    broken = {k: v for k, v in ROWS[type].items() if k != "prompt"} if type != "rlhf" else {"question": "?"}
    path = write_lines(workspace / "data" / "d.jsonl", [*rows[:4], broken, rows[5]])
    progress = run_stage(workspace, type, path)
    assert progress["message"].startswith(f"{path} line 5: missing field 'prompt' (set ")
    assert "data.promptField" in progress["message"]
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("type", ["pretrain", "sft", "reward", "dpo", "rlhf"])
def test_empty_file(workspace, type):
    name = "d.txt" if type == "pretrain" else "d.jsonl"
    path = workspace / "data" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n")
    if type == "pretrain":
        run = stage_run(workspace, "pretrain", "pretrain", data={"path": str(path)},
                        model={"config": {"hiddenSize": 8}, "vocabSize": 300})
        assert cli.main(["run", "--config", str(write_config(workspace / "run.yaml", run))]) == cli.EXIT_FAILED
        progress = read_json(workspace / "p" / "pretrain" / "progress.json")
        assert progress["failureReason"] == "BadData"
    else:
        progress = run_stage(workspace, type, str(path))
    assert progress["message"].startswith(f"{path}: the file is empty")


@pytest.mark.parametrize("type", ["sft", "reward", "dpo", "rlhf"])
def test_malformed_json_line(workspace, type):
    path = write_lines(workspace / "data" / "d.jsonl", [ROWS[type], ROWS[type], '{"prompt": "What', ROWS[type]])
    assert f"{path} line 3: malformed JSON" in run_stage(workspace, type, path)["message"]


@pytest.mark.parametrize("type, field", [("sft", "completion"), ("reward", "chosen"), ("dpo", "rejected"), ("rlhf", "prompt")])
def test_wrong_type_in_a_field(workspace, type, field):
    bad = {**ROWS[type], field: 42}
    path = write_lines(workspace / "data" / "d.jsonl", [ROWS[type]] * 3 + [bad] + [ROWS[type]] * 3)
    message = run_stage(workspace, type, path)["message"]
    assert f"{path} line 4: field {field!r} must be a string, got int" in message


@pytest.mark.parametrize("messages, problem", [
    ("hello", "field 'messages' must be a non-empty list of {role, content} messages, got str"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant"}], "field 'messages' [1].content must be a string, got nothing"),
    ([{"role": "user", "content": "hi"}, {"role": "bot", "content": "moo"}], "[1].role 'bot' is not one of"),
    ([{"role": "user", "content": "hi"}], "has no assistant message"),
])
def test_bad_chat_messages(workspace, messages, problem):
    path = write_lines(workspace / "data" / "chat.jsonl", [CHAT, CHAT, {"messages": messages}, CHAT])
    message = run_stage(workspace, "sft", path)["message"]
    assert message.startswith(f"{path} line 3: ") and problem in message


def test_parquet_rows_are_named_by_row_number(workspace):
    import datasets

    rows = [ROWS["dpo"]] * 5 + [{"prompt": "What does the cow say?", "chosen": " moo", "rejected": None}]
    path = workspace / "data" / "prefs.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    message = run_stage(workspace, "dpo", str(path))["message"]
    assert f"{path} row 6: missing field 'rejected'" in message
