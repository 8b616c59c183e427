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

from refinery.api.sources import stage_sources

from ..data import Table, preference_columns, read_table
from ..errors import DataError, ModelError, SourceError
from ..arrow_data import data_files  # .csv too: every format a stage loads

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
                checked.append(f"{stage.name} {source.field}: {path} ({check_data(stage, source.field, path)})")
                continue
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


def check_data(stage, field: str, path: Path) -> str:
    """The first rows of each file have the stage's columns. Returns what was checked, for the initializer's log."""
    if not path.exists():
        raise SourceError(f"stage {stage.name!r} {field}: {path}: dataset file not found")
    if not os.access(path, os.R_OK):
        raise SourceError(f"stage {stage.name!r} {field}: {path}: not readable")
    files = data_files(path)
    rows = 0
    for f in files:
        table = head(f, stage.data.text_field if stage.data is not None else "text")
        require_columns(stage, table)
        rows += len(table)
    files_text = "the file" if len(files) == 1 else f"each of {len(files)} files"
    return f"columns checked on the first {HEAD_ROWS} rows of {files_text}, {rows} rows; the stage checks every row"


def head(path: Path, text_field: str) -> Table:
    """The first rows of a data file, never the whole of a big one: JSON lines, Parquet and .txt
    are read lazily; a .json list up to WHOLE_JSON_BYTES whole (read_table, so its messages are the
    stage's), a bigger one object by object from its start."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_head(path)
    if suffix == ".csv":
        return _csv_head(path)
    if suffix == ".txt":
        return _txt_head(path, text_field)
    if suffix == ".json" and path.is_file() and path.stat().st_size > WHOLE_JSON_BYTES:
        return _json_head(path)
    if suffix != ".jsonl":
        return read_table(path, text_field=text_field)
    rows, lines = [], []
    with open(path, "rb") as f:  # decoded line by line: a text-mode reader decodes ahead, into the unread tail
        for number, line in islice(((n, _utf8(path, n, l)) for n, l in enumerate(f, start=1) if l.strip()), HEAD_ROWS):
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


def _utf8(path: Path, number: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} line {number}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _txt_head(path: Path, text_field: str) -> Table:
    """The first HEAD_ROWS documents (blank-line-separated blocks), with the line each starts on."""
    rows, lines, block, start = [], [], [], 0
    with open(path, "rb") as f:  # decoded line by line, as JSON lines
        for number, line in enumerate(chain((_utf8(path, n, l) for n, l in enumerate(f, start=1)), [""]), start=1):
            if line.strip():
                start = start if block else number
                block.append(line.rstrip("\n"))
            elif block:
                rows.append({text_field: "\n".join(block)})
                lines.append(start)
                block = []
                if len(rows) == HEAD_ROWS:
                    break
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


def _csv_head(path: Path) -> Table:
    """The first HEAD_ROWS rows of a CSV file, read block by block (pyarrow's streaming reader)."""
    import pyarrow as pa
    import pyarrow.csv as pv

    rows: list[dict] = []
    try:
        # One block at a time (no read-ahead threads): the rest of a big file is never parsed.
        with pv.open_csv(path, read_options=pv.ReadOptions(use_threads=False, block_size=1 << 20)) as reader:
            for batch in reader:
                rows += batch.to_pylist()[: HEAD_ROWS - len(rows)]
                if len(rows) >= HEAD_ROWS:
                    break
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read it as csv: {str(exc).splitlines()[0]}") from None
    if not rows:
        raise DataError(f"{path}: the file is empty: no rows")
    return Table(path, rows, unit="row")


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
