"""Reading datasets: formats, and errors that name the file, line and field."""

from __future__ import annotations

import json

import pytest

from refinery_trainer.data import read_table
from refinery_trainer.errors import DataError


def test_txt_documents_are_blank_line_separated(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("first doc\nstill first\n\n\nsecond doc\n  \nthird")
    table = read_table(path, text_field="body")
    assert [r["body"] for r in table.rows] == ["first doc\nstill first", "second doc", "third"]
    assert table.lines == [1, 5, 7]


def test_jsonl_skips_blank_lines_and_remembers_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    table = read_table(path)
    assert table.rows == [{"a": 1}, {"a": 2}] and table.lines == [1, 3]


@pytest.mark.parametrize("content, message", [
    ('{"a": 1}\n{"a": \n', "line 2: malformed JSON"),
    ('{"a": 1}\n[1, 2]\n', "line 2: expected a JSON object, got list"),
])
def test_jsonl_errors_name_the_line(tmp_path, content, message):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as err:
        read_table(path)
    assert str(path) in str(err.value) and err.value.reason == "BadData"


def test_json_list_and_data_key(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"x": 1}]))
    (tmp_path / "b.json").write_text(json.dumps({"data": [{"x": 2}]}))
    assert read_table(tmp_path / "a.json").rows == [{"x": 1}]
    assert read_table(tmp_path / "b.json").where(0).endswith("b.json row 1")


def test_missing_file_and_unsupported_format(tmp_path):
    with pytest.raises(DataError, match="dataset file not found"):
        read_table(tmp_path / "none.jsonl")
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported data format .csv"):
        read_table(tmp_path / "d.csv")


def test_require_names_line_field_and_the_spec_field_to_set(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "p", "completion": "c"}\n{"prompt": "p", "answer": "c"}\n')
    with pytest.raises(DataError) as err:
        read_table(path).require("prompt", "completion", hint="data.completionField")
    assert str(err.value) == (f"{path} line 2: missing field 'completion' (set data.completionField if the column "
                              "has another name); fields present: answer, prompt")


def test_require_text_rejects_non_strings(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n{"text": 3}\n')
    with pytest.raises(DataError, match="line 2: field 'text' must be a string, got int"):
        read_table(path).require("text").require_text("text")


def test_split_is_seeded_disjoint_and_keeps_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"i": i}) + "\n" for i in range(20)))
    table = read_table(path)
    train, held = table.split(0.25, seed=3)
    again, _ = table.split(0.25, seed=3)
    assert len(held) == 5 and len(train) == 15 and train.rows == again.rows
    assert {r["i"] for r in train.rows}.isdisjoint(r["i"] for r in held.rows)
    assert all(row["i"] + 1 == line for row, line in zip(held.rows, held.lines))
    assert train.select({"n": "i"})[0].keys() == {"n"}


def test_split_needs_two_rows(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n')
    with pytest.raises(DataError, match="need at least 2"):
        read_table(path).split(0.1)
