"""examples/data is what scripts/make_example_data.py generates, and the task is what it claims."""

from __future__ import annotations

import json

from .example_task import DATA, example_data


def read_jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines()]


def test_committed_data_is_regenerated_byte_for_byte(tmp_path):
    counts = example_data.generate(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(counts) == sorted(p.name for p in DATA.iterdir())
    for name in counts:
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), f"{name}: rerun scripts/make_example_data.py"
    assert sum(p.stat().st_size for p in DATA.iterdir()) < 2_000_000


def test_held_out_prompts_are_unseen_and_preferences_are_right():
    train = {r["prompt"] for name in ("sft.jsonl", "preferences.jsonl", "prompts.jsonl") for r in read_jsonl(name)}
    for name in ("sft_eval.jsonl", "preferences_eval.jsonl", "prompts_eval.jsonl", "answers_eval.jsonl"):
        assert not train & {r["prompt"] for r in read_jsonl(name)}, name
    for row in read_jsonl("preferences.jsonl") + read_jsonl("preferences_eval.jsonl"):
        assert example_data.is_correct(row["prompt"], row["chosen"])
        assert not example_data.is_correct(row["prompt"], row["rejected"])


def test_sft_demonstrations_leave_room_for_rlhf():
    """The confused animals are answered wrongly more often than not; the others mostly right."""
    rows = read_jsonl("sft.jsonl")
    for animal in example_data.SOUNDS:
        mine = [r for r in rows if example_data.animal_of(r["prompt"]) == animal]
        right = sum(example_data.is_correct(r["prompt"], r["completion"]) for r in mine) / len(mine)
        assert (right < 0.5) == (animal in example_data.CONFUSIONS), (animal, right)


def test_is_correct():
    assert example_data.is_correct("What does the sleepy cow say?", " moo")
    assert example_data.is_correct("Tell me what the owl says.", " hoot.")
    assert not example_data.is_correct("What does the sleepy cow say?", " baa")
    assert not example_data.is_correct("What does the sleepy cow say?", "")
    assert not example_data.is_correct("What is the weather?", " moo")


def test_reference_answers_are_right():
    rows = read_jsonl("answers_eval.jsonl")
    assert len(rows) == 128
    assert all(example_data.is_correct(r["prompt"], r["reference"]) for r in rows)
