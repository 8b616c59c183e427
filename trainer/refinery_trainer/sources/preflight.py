"""Check every input of every stage before the first one trains: a typo in the last stage's data
path fails the pipeline in seconds, not after the stages before it have trained for hours.

For each data source (fetched, or a path on the volume): it exists, it is readable, and its
first rows have the columns its stage reads — the same `Table` checks, and so the same BadData
messages, as the stage itself. For each model source: a saved model (config.json) is there.
Inputs that another stage produces (`from`, `rewardModel`) do not exist yet and are not checked.
Then each training stage against its model's config and tokenizer (`model_checks.py`): chat
template, pad token, seqLen, LoRA target modules, reward head — failing as `Misconfigured`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from itertools import chain, islice
from pathlib import Path

from refinery_operator.api.sources import stage_sources

from ..data import Table, preference_columns, read_table
from ..errors import DataError, ModelError, SourceError
from .files import data_files

HEAD_ROWS = 64  # rows of each file read to check its columns (whole files: the stage reads those)
WHOLE_JSON_BYTES = 16 * 2**20  # a .json list up to this size is read whole (the stage's own reader and messages)
JSON_CHUNK = 2**20  # characters of a bigger .json read at a time until HEAD_ROWS objects are decoded


def check_pipeline(stages, data_root: str, fetched: Mapping[str, str]) -> list[str]:
    """Check every stage's sources; return what was checked (one line each). Raises DataError/ModelError."""
    checked = []
    for stage in stages:
        for source in stage_sources(stage):
            path = local_path(source.ref.uri, data_root, fetched)
            if source.field.startswith("data.") or source.field == "eval.generate.path":
                check_data(stage, source.field, path)
            elif source.field.endswith(".python.path"):
                check_reward_function(stage, source.field, path)
            elif source.field in ("model.path", "model.hubId"):
                check_model(stage, source.field, path)
            elif source.ref.remote or path.exists():  # a tokenizer that is neither may be a hub id (as before)
                check_tokenizer(stage, path)
            checked.append(f"{stage.name} {source.field}: {path}")
    from .model_checks import check_models  # torch and transformers: only once the files are known to be there

    return checked + check_models(stages, data_root, fetched)


def local_path(uri: str, data_root: str, fetched: Mapping[str, str]) -> Path:
    if uri in fetched:
        return Path(fetched[uri])
    p = Path(os.path.expanduser(uri))
    return p if p.is_absolute() else Path(data_root) / p


def check_reward_function(stage, field: str, path: Path) -> None:
    """The file exists and defines the function at its top level (read, not run: the stage imports it)."""
    import ast

    from ..rewards.user import BadRewardFunction

    if not path.is_file():
        raise SourceError(f"stage {stage.name!r} {field}: {path}: reward function file not found")
    function = _python_source(stage, field).function
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as exc:
        raise BadRewardFunction(f"stage {stage.name!r} {field}: {path}: line {exc.lineno}: {exc.msg}") from None
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    defined |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    defined |= {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    if function not in defined:
        raise BadRewardFunction(f"stage {stage.name!r} {field}: {path} defines no function {function!r}")


def _python_source(stage, field: str):
    """The `python:` settings a field such as `rl.rewards[1].python.path` names."""
    import re

    if field.startswith("eval.generate.rewards["):
        return stage.eval_.generate.rewards[int(re.match(r"eval\.generate\.rewards\[(\d+)\]", field).group(1))].python
    kind, index = re.match(r"rl\.(rewards|audit)\[(\d+)\]", field).groups()
    return getattr(stage.rl, kind)[int(index)].python


def check_data(stage, field: str, path: Path) -> None:
    if not path.exists():
        raise SourceError(f"stage {stage.name!r} {field}: {path}: dataset file not found")
    if not os.access(path, os.R_OK):
        raise SourceError(f"stage {stage.name!r} {field}: {path}: not readable")
    for f in data_files(path):
        require_columns(stage, head(f, stage.data.text_field if stage.data is not None else "text"))


def head(path: Path, text_field: str) -> Table:
    """The first rows of a data file, never the whole of a big one: JSON lines, Parquet and .txt
    are read lazily; a .json list up to WHOLE_JSON_BYTES whole (read_table, so its messages are the
    stage's), a bigger one object by object from its start."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_head(path)
    if suffix == ".txt":
        return _txt_head(path, text_field)
    if suffix == ".json" and path.is_file() and path.stat().st_size > WHOLE_JSON_BYTES:
        return _json_head(path)
    if suffix != ".jsonl":
        return read_table(path, text_field=text_field)
    rows, lines = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in islice(((n, l) for n, l in enumerate(f, start=1) if l.strip()), HEAD_ROWS):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {number}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
            lines.append(number)
    if not rows:
        raise DataError(f"{path}: the file is empty: no JSON lines")
    return Table(path, rows, lines)


def _txt_head(path: Path, text_field: str) -> Table:
    """The first HEAD_ROWS documents (blank-line-separated blocks), with the line each starts on."""
    rows, lines, block, start = [], [], [], 0
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(chain(f, [""]), start=1):
                if line.strip():
                    start = start if block else number
                    block.append(line.rstrip("\n"))
                elif block:
                    rows.append({text_field: "\n".join(block)})
                    lines.append(start)
                    block = []
                    if len(rows) == HEAD_ROWS:
                        break
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} near the start)") from None
    if not rows:
        raise DataError(f"{path}: the file is empty: no text (documents are blank-line-separated blocks)")
    return Table(path, rows, lines)


def _json_head(path: Path) -> Table:
    """The first HEAD_ROWS objects of a JSON list (or `{"data": [...]}`), decoded from the start of the file."""
    decoder, rows = json.JSONDecoder(), []
    with open(path, encoding="utf-8") as f:
        buf = f.read(JSON_CHUNK)
        opening = re.match(r'\s*(\{\s*"data"\s*:\s*)?\[', buf)
        if opening is None:
            raise DataError(f"{path}: expected a JSON list of objects (or {{\"data\": [...]}})")
        pos = opening.end()
        while len(rows) < HEAD_ROWS:
            pos = _skip_separators(buf, pos)
            if pos < len(buf) and buf[pos] == "]":
                break
            try:
                row, pos = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as exc:
                more = f.read(JSON_CHUNK)
                if not more:  # the object really is malformed (or cut off), not just unread yet
                    raise DataError(f"{path} row {len(rows) + 1}: malformed JSON ({exc.msg})") from None
                buf, pos = buf[pos:] + more, 0
                continue
            if not isinstance(row, dict):
                raise DataError(f"{path} row {len(rows) + 1}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: the file is empty: no rows")
    return Table(path, rows, unit="row")


def _skip_separators(buf: str, pos: int) -> int:
    while pos < len(buf) and (buf[pos].isspace() or buf[pos] == ","):
        pos += 1
    return pos


def _parquet_head(path: Path) -> Table:
    import pyarrow.parquet as pq

    try:
        batch = next(pq.ParquetFile(path).iter_batches(batch_size=HEAD_ROWS), None)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise DataError(f"{path}: cannot read parquet: {exc}") from None
    if batch is None or batch.num_rows == 0:
        raise DataError(f"{path}: the file is empty: no rows")
    return Table(path, batch.to_pylist(), unit="row")


def require_columns(stage, table: Table) -> None:
    """The columns `stage` reads, checked as the stage itself checks them."""
    spec = stage.data
    if stage.type == "eval":
        gen = stage.eval_.generate
        columns = (gen.prompt_field, gen.reference_field)
        table.require(*columns, hint="eval.generate.promptField / referenceField").require_text(*columns)
    elif stage.type == "pretrain":
        table.require(spec.text_field, hint="data.textField").require_text(spec.text_field)
    elif stage.type == "sft":
        if table.has_column(spec.messages_field):
            table.require(spec.messages_field, hint="data.messagesField").require_messages(spec.messages_field)
        else:
            columns = (spec.prompt_field, spec.completion_field)
            table.require(*columns, hint="data.promptField/data.completionField").require_text(*columns)
    elif stage.type in ("reward", "dpo"):
        preference_columns(spec, table, table)
    elif stage.type == "rlhf":
        table.require(spec.prompt_field, hint="data.promptField").require_text(spec.prompt_field)


def check_model(stage, field: str, path: Path) -> None:
    if not path.exists():
        raise SourceError(f"stage {stage.name!r} {field}: {path}: model folder not found")
    if not ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
        raise ModelError(f"stage {stage.name!r} {field}: {path} is not a saved model (no config.json)")


def check_tokenizer(stage, path: Path) -> None:
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise ModelError(f"stage {stage.name!r} model.tokenizer: {path} has no tokenizer (tokenizer.json)")
