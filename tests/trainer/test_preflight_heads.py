"""Preflight reads only the first rows of a data file, whatever its format: a multi-GB corpus the
stage would stream is not loaded whole by the initializer. The head is the same as the first rows
the stage's own reader (refinery_trainer.data.read_table) finds."""

from __future__ import annotations

import json

import pytest

from refinery_trainer.data import read_table
from refinery_trainer.errors import DataError
from refinery_trainer.sources import preflight


def test_a_text_corpus_is_read_up_to_its_first_documents(tmp_path):
    path = tmp_path / "corpus.txt"
    docs = [f"document {i}\nits second line" for i in range(1000)]
    path.write_text("\n\n".join(docs) + "\n")
    head = preflight.head(path, "text")
    whole = read_table(path)
    assert len(head) == preflight.HEAD_ROWS and head.rows == whole.rows[: preflight.HEAD_ROWS]
    assert head.lines == whole.lines[: preflight.HEAD_ROWS]


@pytest.mark.parametrize("wrapped", [False, True], ids=["list", "data-key"])
def test_a_big_json_list_is_decoded_object_by_object_from_its_start(tmp_path, monkeypatch, wrapped):
    monkeypatch.setattr(preflight, "WHOLE_JSON_BYTES", 0)  # every file counts as big
    monkeypatch.setattr(preflight, "JSON_CHUNK", 50)  # objects straddle the chunks
    rows = [{"prompt": f"question {i}", "completion": " answer " * (i % 7)} for i in range(500)]
    path = tmp_path / "sft.json"
    text = json.dumps({"data": rows} if wrapped else rows, indent=1)
    path.write_text(text[:-200])  # cut off near its end: the head never gets there
    head = preflight.head(path, "text")
    assert head.rows == rows[: preflight.HEAD_ROWS] and head.unit == "row"


def test_a_big_json_file_that_is_not_a_list_of_objects_fails_as_bad_data(tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "WHOLE_JSON_BYTES", 0)
    (tmp_path / "a.json").write_text('{"rows": []}')
    (tmp_path / "b.json").write_text('[{"prompt": "x"}, 3]')
    with pytest.raises(DataError, match="expected a JSON list of objects"):
        preflight.head(tmp_path / "a.json", "text")
    with pytest.raises(DataError, match="row 2: expected a JSON object, got int"):
        preflight.head(tmp_path / "b.json", "text")
