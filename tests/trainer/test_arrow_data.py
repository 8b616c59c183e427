"""Stage data through `datasets` (refinery_trainer.arrow_data, mixture): every format loads into a
memory-mapped Arrow table cached on the stage's volume, bad input fails with the file, line and
field, mixtures follow their weights, and preflight reads only the head of a file."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from refinery_trainer.arrow_data import load_table
from refinery_trainer.errors import DataError
from refinery_trainer.mixture import MixedTable
from refinery_trainer.sources import preflight

ROWS = [{"prompt": f"question {i}", "completion": f" answer {i}"} for i in range(30)]


def write_jsonl(path, rows, blank_every: int = 0):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, row in enumerate(rows):
        if blank_every and i % blank_every == 0:
            lines.append("")  # blank lines are skipped; line numbers still count them
        lines.append(row if isinstance(row, str) else json.dumps(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_format(path, rows):
    """`rows` as a file of the format `path`'s suffix names."""
    import datasets

    suffix = path.suffix
    if suffix == ".jsonl":
        write_jsonl(path, rows)
    elif suffix == ".json":
        path.write_text(json.dumps({"data": rows} if "wrapped" in path.name else rows))
    else:
        dataset = datasets.Dataset.from_list(rows)
        dataset.to_parquet(str(path)) if suffix == ".parquet" else dataset.to_csv(str(path), index=False)
    return path


@pytest.mark.parametrize("name", ["d.jsonl", "d.json", "wrapped.json", "d.parquet", "d.csv"])
def test_every_format_loads_into_a_memory_mapped_table_cached_on_the_volume(tmp_path, name):
    path = write_format(tmp_path / name, ROWS)
    cache = tmp_path / "cache"
    table = load_table(path, cache_dir=cache)
    assert table.dataset.to_list() == ROWS
    files = [f["filename"] for f in table.dataset.cache_files]
    assert files and all(f.startswith(str(cache)) for f in files)  # an Arrow file on the volume, memory-mapped
    before = sorted(p for p in cache.rglob("*.arrow"))
    again = load_table(path, cache_dir=cache)  # a retry: the same Arrow file, not converted again
    assert [f["filename"] for f in again.dataset.cache_files] == files and sorted(cache.rglob("*.arrow")) == before


def test_text_documents_are_blank_line_separated_blocks(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("first doc\nstill first\n\n\n  \nsecond doc\n\nthird\n")
    table = load_table(path, text_field="body", cache_dir=tmp_path / "cache")
    assert table.dataset["body"] == ["first doc\nstill first", "second doc", "third"]


def test_a_folder_of_shards_names_the_shard_and_line_of_a_bad_row(tmp_path):
    write_jsonl(tmp_path / "shards" / "a.jsonl", ROWS[:10])
    write_jsonl(tmp_path / "shards" / "b.jsonl", [*ROWS[:3], {"prompt": "q"}, *ROWS[4:8]], blank_every=2)
    table = load_table(tmp_path / "shards", cache_dir=tmp_path / "cache")
    assert len(table) == 18
    with pytest.raises(DataError) as err:
        table.require("prompt", "completion", hint="data.completionField")
    # row 4 of b.jsonl sits on line 6: blank lines before rows 1 and 3
    assert str(err.value) == (f"{tmp_path / 'shards' / 'b.jsonl'} line 6: missing field 'completion' (set "
                              "data.completionField if the column has another name); fields present: prompt")


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "a", "completion": "b"}\n{"prompt": "What\n', "line 2: malformed JSON"),
    ('{"prompt": "a", "completion": "b"}\n[1, 2]\n', "line 2: expected a JSON object, got list"),
    ("\n\n", "the file is empty: no JSON lines"),
    (b'{"prompt": "caf\xe9"}\n', "not UTF-8 text"),
])
def test_a_file_datasets_cannot_read_fails_with_its_line(tmp_path, content, message):
    path = tmp_path / "d.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError) as err:
        load_table(path, cache_dir=tmp_path / "cache")
    assert str(err.value).startswith(f"{path}") and message in str(err.value)
    assert "Traceback" not in str(err.value) and "DatasetGenerationError" not in str(err.value)


def test_other_bad_inputs_are_refused_with_what_to_change(tmp_path):
    cache = tmp_path / "cache"
    (tmp_path / "d.xml").write_text("<rows/>")
    with pytest.raises(DataError, match=r"unsupported data format \.xml; use one of .*\.csv"):
        load_table(tmp_path / "d.xml", cache_dir=cache)
    with pytest.raises(DataError, match="dataset file not found"):
        load_table(tmp_path / "none.jsonl", cache_dir=cache)
    write_jsonl(tmp_path / "mixed" / "a.jsonl", ROWS[:3])
    write_jsonl(tmp_path / "mixed" / "b.jsonl", [{"prompt": 1, "completion": 2}])
    with pytest.raises(DataError, match="its files do not have the same columns and types"):
        load_table(tmp_path / "mixed", cache_dir=cache)
    typed = write_jsonl(tmp_path / "typed.jsonl", [*ROWS[:3], {"prompt": 42, "completion": "x"}])
    with pytest.raises(DataError, match=r"typed.jsonl line 4: field 'prompt' must be a string, got int"):
        load_table(typed, cache_dir=cache).require("prompt").require_text("prompt")


def test_chats_are_checked_in_arrow_and_the_message_names_the_row(tmp_path):
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "moo"}]
    rows = [{"messages": chat}] * 50 + [{"messages": [{"role": "user", "content": "hi"}]}] + [{"messages": chat}] * 5
    table = load_table(write_jsonl(tmp_path / "chat.jsonl", rows), cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match=r"chat.jsonl line 51: field 'messages' has no assistant message"):
        table.require("messages").require_messages("messages")
    ok = load_table(write_jsonl(tmp_path / "ok.jsonl", [{"messages": chat}] * 20), cache_dir=tmp_path / "cache")
    train, held = ok.require_messages("messages").split(0.25, seed=0)
    assert (len(train), len(held)) == (15, 5)


def test_the_held_out_split_is_seeded_and_disjoint(tmp_path):
    rows = [{"prompt": f"q{i}", "completion": "a"} for i in range(200)]
    table = load_table(write_jsonl(tmp_path / "d.jsonl", rows), cache_dir=tmp_path / "cache")
    train, held = table.split(0.1, seed=3)
    again, _ = table.split(0.1, seed=3)
    other, _ = table.split(0.1, seed=4)
    assert (len(train), len(held)) == (180, 20)
    assert train.dataset["prompt"] == again.dataset["prompt"] != other.dataset["prompt"]
    assert set(train.dataset["prompt"]).isdisjoint(held.dataset["prompt"])
    assert set(train.select({"q": "prompt"}).column_names) == {"q"}


def test_a_mixture_draws_rows_in_proportion_to_the_weights(tmp_path):
    """Three datasets of 3000 rows weighted 6:3:1: the mixture stops when the first runs out (the
    weight-6 one), so ~5000 rows, and each dataset's share of them is its weight's within 2 points."""
    cache = tmp_path / "cache"
    parts = []
    for name, weight, suffix in (("web", 6.0, ".jsonl"), ("code", 3.0, ".parquet"), ("math", 1.0, ".csv")):
        rows = [{"prompt": f"{name} {i}", "completion": "x"} for i in range(3000)]
        parts.append((load_table(write_format(tmp_path / f"{name}{suffix}", rows), cache_dir=cache), weight))
    table = MixedTable(parts, seed=0)
    mixed = table.require("prompt", "completion").select({"prompt": "prompt", "completion": "completion"})
    counts = Counter(p.split()[0] for p in mixed["prompt"])
    total = sum(counts.values())
    assert 4500 < total < 5500 and counts["web"] == 3000
    for name, weight in (("web", 0.6), ("code", 0.3), ("math", 0.1)):
        assert abs(counts[name] / total - weight) < 0.02, counts
    assert len(set(mixed["prompt"])) == total  # no row repeated
    assert mixed["prompt"] == table.select({"prompt": "prompt", "completion": "completion"})["prompt"]  # seeded

    train, held = table.split(0.1, seed=0)
    held_counts = Counter(p.split()[0] for p in held.select({"prompt": "prompt"})["prompt"])
    assert set(held_counts) == {"web", "code", "math"}
    assert table.lineage(["data/web.jsonl", "s3://b/code.parquet", "data/math.csv"]) == {
        "mixture": [{"path": "data/web.jsonl", "weight": 6.0, "share": 0.6, "rows": 3000},
                    {"path": "s3://b/code.parquet", "weight": 3.0, "share": 0.3, "rows": 3000},
                    {"path": "data/math.csv", "weight": 1.0, "share": 0.1, "rows": 3000}],
        "seed": 0, "stoppingStrategy": "first_exhausted"}


def test_a_mixture_names_the_file_of_a_bad_row(tmp_path):
    cache = tmp_path / "cache"
    good = load_table(write_jsonl(tmp_path / "a.jsonl", ROWS), cache_dir=cache)
    bad = load_table(write_jsonl(tmp_path / "b.jsonl", [*ROWS[:5], {"prompt": "q"}]), cache_dir=cache)
    with pytest.raises(DataError, match=r"b.jsonl line 6: missing field 'completion'"):
        MixedTable([(good, 1.0), (bad, 1.0)]).require("prompt", "completion")


def sft_stage(type_="sft", **data):
    from refinery.api.v1alpha1 import Stage

    return Stage.model_validate({"name": "s", "type": type_, "from": "p", "data": data})


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".txt"])
def test_preflight_passes_a_file_whose_tail_is_never_read(tmp_path, suffix):
    """The tail after the first rows is malformed (or not UTF-8): preflight passes and says it checked
    the first rows only; the stage, which reads every row, would refuse it. (A CSV file is parsed in
    blocks of 1 MiB, pyarrow's default, so its good part is longer than that.)"""
    good = "".join(json.dumps(r) + "\n" for r in ROWS * 4) if suffix == ".jsonl" else \
        "prompt,completion\n" + "".join(f"{r['prompt']},{r['completion']}\n" for r in ROWS * 2000) if suffix == ".csv" else \
        "".join(f"document {i}\n\n" for i in range(200))
    path = tmp_path / f"big{suffix}"
    path.write_bytes(good.encode() + b'{"prompt": "cut off\n\xff\xfe not text,,,\n' * 1000)
    stage = sft_stage("pretrain" if suffix == ".txt" else "sft", path=str(path))
    lines = preflight.check_pipeline([stage], str(tmp_path), {})
    assert f"s data.path: {path} (columns checked on the first {preflight.HEAD_ROWS} rows of the file, " \
           f"{preflight.HEAD_ROWS} rows; the stage checks every row)" in lines
    with pytest.raises(DataError):
        load_table(path, cache_dir=tmp_path / "cache").require("text" if suffix == ".txt" else "prompt")


def test_preflight_checks_every_dataset_of_a_mixture(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", ROWS)
    b = write_jsonl(tmp_path / "b.jsonl", [{"question": "q", "completion": "c"}])
    stage = sft_stage(mixture=[{"path": str(a), "weight": 1}, {"path": str(b), "weight": 2}])
    with pytest.raises(DataError, match=r"b.jsonl line 1: missing field 'prompt'"):
        preflight.check_pipeline([stage], str(tmp_path), {})


def test_sft_trains_on_a_mixture_and_records_it_in_its_lineage(pretrained, workspace):
    """The stage on the new path end to end: two files of different formats mixed 1:1, the held-out
    loss falls, result.json and model/refinery-lineage.json list each dataset and its weight, the
    Arrow copies sit in the stage's cache folder, and the model card names them."""
    import datasets

    from refinery.api.v1alpha1 import Stage
    from refinery_trainer import cli
    from refinery_trainer.export.card import data_files

    from .conftest import read_json, sft_rows, stage_run, write_config
    from .conftest import write_jsonl as write_rows

    rows = sft_rows()
    write_rows(workspace / "data" / "a.jsonl", rows[::2])
    datasets.Dataset.from_list(rows[1::2]).to_parquet(str(workspace / "data" / "b.parquet"))
    mixture = [{"path": "data/a.jsonl", "weight": 1.0}, {"path": "data/b.parquet", "weight": 1.0}]
    run = stage_run(workspace, "sft", "sft", data={"mixture": mixture}, from_="pretrain",
                    initModel=str(pretrained / "model"), training={"maxSteps": 40, "learningRate": 2e-3})
    assert cli.main(["run", "--config", str(write_config(workspace / "sft.yaml", run))]) == 0

    stage_dir = workspace / "p" / "sft"
    result = read_json(stage_dir / "result.json")
    assert result["metrics"]["evalLoss"] < result["metrics"]["initialEvalLoss"]
    assert [(m["path"], m["weight"], m["rows"]) for m in result["data"]["mixture"]] == [
        ("data/a.jsonl", 1.0, 80), ("data/b.parquet", 1.0, 80)]
    assert read_json(stage_dir / "model" / "refinery-lineage.json")["data"] == result["data"]
    assert list((stage_dir / "cache" / "datasets").rglob("*.arrow"))
    stage = Stage.model_validate({"name": "sft", "type": "sft", "from": "pretrain", "data": {"mixture": mixture}})
    assert [f for f, _, _ in data_files(stage, workspace)] == ["data.mixture[0] (weight 1)", "data.mixture[1] (weight 1)"]


def test_conversational_preference_pairs_are_checked_as_chats(tmp_path):
    """TRL's conversational pairs: the prompt's turns, chosen/rejected ending with the assistant. The
    stage (Arrow) and preflight (the head as rows) accept them and name the line of a bad one."""
    from refinery.api.v1alpha1 import DataSpec
    from refinery_trainer.data import is_chat_pairs, preference_columns

    def pair(answer="moo", prompt=None):
        return {"prompt": prompt or [{"role": "user", "content": "What does the cow say?"}],
                "chosen": [{"role": "assistant", "content": answer}], "rejected": [{"role": "assistant", "content": "baa"}]}

    spec = DataSpec(path="pairs.jsonl")
    good = load_table(write_jsonl(tmp_path / "pairs.jsonl", [pair()] * 20), cache_dir=tmp_path / "cache")
    train, held = good.split(0.1)
    assert is_chat_pairs(spec, good) and preference_columns(spec, train, held) == {
        "prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}
    assert preference_columns(spec, *[preflight.head(tmp_path / "pairs.jsonl", "text")] * 2)

    no_answer = {**pair(), "chosen": [{"role": "user", "content": "moo"}]}
    text_prompt = pair(prompt="What does the cow say?")
    for bad, problem in ((no_answer, "field 'chosen' has no assistant message"),
                         (text_prompt, "field 'prompt' must be a non-empty list of {role, content} messages, got str")):
        path = write_jsonl(tmp_path / "bad.jsonl", [pair()] * 5 + [bad])
        table = load_table(path, cache_dir=tmp_path / "cache")
        with pytest.raises(DataError) as err:
            preference_columns(spec, table, table)
        assert str(err.value).startswith(f"{path} line 6: {problem}")
        with pytest.raises(DataError, match=f"line 6: {problem}".replace("{", r"\{").replace("}", r"\}")):
            head = preflight.head(path, "text")
            preference_columns(spec, head, head)


def test_reward_renders_conversational_pairs_as_the_chat_template_does(tmp_path):
    import datasets

    from refinery_trainer.stages.reward import render_pairs, tokenize_pairs
    from refinery_trainer.tokenizer import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(["the cow says moo", "the sheep says baa"] * 50, vocab_size=300)
    chat = [{"role": "user", "content": "What does the cow say?"}]
    pairs = datasets.Dataset.from_list([{"prompt": chat, "chosen": [{"role": "assistant", "content": "moo"}],
                                         "rejected": [{"role": "assistant", "content": "baa"}]}])
    rendered = render_pairs(tokenizer, pairs)[0]
    whole = tokenizer.apply_chat_template(chat + [{"role": "assistant", "content": "moo"}], tokenize=False)
    assert rendered["prompt"] == tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert rendered["prompt"] + rendered["chosen"] == whole
    ids = tokenize_pairs(tokenizer, render_pairs(tokenizer, pairs))[0]
    assert ids["chosen_ids"] == tokenizer(whole, add_special_tokens=False)["input_ids"]
