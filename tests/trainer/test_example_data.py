"""examples/data is what scripts/make_example_data.py generates, and the task is what it claims."""

from __future__ import annotations

import json

from .example_task import DATA, example_data


def read_jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines()]


def test_committed_data_is_regenerated_byte_for_byte(tmp_path):
    counts = example_data.generate(tmp_path)
    ours = [p for p in DATA.iterdir() if not p.name.startswith("math_")]  # math_*: tiny-math's (make_math_data.py)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(counts) == sorted(p.name for p in ours)
    for name in counts:
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), f"{name}: rerun scripts/make_example_data.py"
    assert sum(p.stat().st_size for p in ours) < 2_000_000


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


def test_the_tiny_math_data_is_regenerated_byte_for_byte_and_holds_out_its_prompts(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_math_data", DATA.parents[1] / "scripts" / "make_math_data.py")
    math_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(math_data)
    counts = math_data.generate(tmp_path)
    assert sorted(counts) == sorted(p.name for p in DATA.glob("math_*"))
    for name in counts:
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), f"{name}: rerun scripts/make_math_data.py"
    trained = {r["prompt"] for name in ("math_sft.jsonl", "math_prompts.jsonl") for r in read_jsonl(name)}
    for name in ("math_prompts_eval.jsonl", "math_answers_eval.jsonl"):
        rows = read_jsonl(name)
        assert rows and not {r["prompt"] for r in rows} & trained, name  # held-out wordings: never trained on
        assert all(r["reference"].strip().isdigit() for r in rows)
