"""A stage's dataset as a memory-mapped Arrow table (`datasets`), checked with the messages of `data.Table`.

    table = load_table(path, cache_dir=stage_dir / "cache" / "datasets")
    table.require("prompt", "completion", hint="data.promptField").require_text("prompt", "completion")
    train, held_out = table.split(0.1, seed=0)
    dataset = train.select({"prompt": "question", "completion": "answer"})   # a datasets.Dataset in TRL's names

Every file (`.jsonl`, `.json`, `.parquet`, `.csv`, `.txt`) goes through `datasets.load_dataset`, which
converts it once into an Arrow file under `cache_dir` and memory-maps it: a 10 M-row sft set is pages
of one file, not 10 M Python dicts (benchmarks/dataset_load.py measures both). A folder of shards is
one table per file, concatenated (no copy), so a row still knows its file. The checks run on Arrow
columns (null counts, types, and for chats a vectorised pass over the flattened messages); only
for the row a message is about, or a column `datasets` could only type as JSON (mixed types), are
rows turned into Python objects. `datasets`' own errors become DataError naming the file and line,
found by re-reading the file as text up to the first bad line (`diagnose`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .data import ROLES, SUPPORTED, _chat_problem
from .errors import DataError
from .sources import files as sources_files

if TYPE_CHECKING:
    from datasets import Dataset

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}
ARROW_SUPPORTED = (*SUPPORTED, ".csv")
SCAN_BATCH = 4096  # rows turned into Python objects at a time where a check cannot stay in Arrow


def data_files(path: Path) -> list[Path]:
    """The file itself, or every file under a folder that `datasets` loads (.csv too)."""
    return sources_files.data_files(path, ARROW_SUPPORTED)


@dataclass
class ArrowTable:
    """A checked view of one data source: `dataset` (all its files, concatenated) and, per file, the
    number of rows, so row i can be named by its file and line. A split's parts share their parent's
    checks (`parent`): the parent is checked whole, once."""

    path: Path
    dataset: Dataset
    files: list[Path] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    parent: ArrowTable | None = None
    _checked: set = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def column_names(self) -> list[str]:
        return self.dataset.column_names

    def has_column(self, name: str) -> bool:
        return name in self.dataset.column_names

    def where(self, i: int) -> str:
        """`<file> line <n>` (JSON lines, text) or `<file> row <n>` of row i of the whole source."""
        for f, n in zip(self.files, self.counts, strict=True):
            if i < n:
                return locate(f, i)
            i -= n
        return f"{self.path} row {i + 1}"

    # ---- checks: the same messages as data.Table's ----------------------------------------

    def require(self, *columns: str, hint: str = "") -> ArrowTable:
        """Every row has every column, as a non-null value. Returns self; raises DataError."""
        if self.parent is not None:
            self.parent.require(*columns, hint=hint)
            return self
        if not len(self):
            raise DataError(f"{self.path}: no rows")
        for name in columns:
            if ("require", name) in self._checked:
                continue
            row = 0 if name not in self.column_names else _first_null(self.dataset, name)
            if row is not None:
                present = ", ".join(sorted(k for k, v in self.dataset[row].items() if v is not None)) or "none"
                tip = f" (set {hint} if the column has another name)" if hint else ""
                raise DataError(f"{self.where(row)}: missing field {name!r}{tip}; fields present: {present}")
            self._checked.add(("require", name))
        return self

    def require_text(self, *columns: str) -> ArrowTable:
        """The columns hold strings (after `require`)."""
        if self.parent is not None:
            self.parent.require_text(*columns)
            return self
        for name in columns:
            if ("text", name) in self._checked:
                continue
            if not _is_string(self.dataset.features[name]):
                row, value = _first_python(self.dataset, name, lambda v: not isinstance(v, str))
                if row is not None:
                    raise DataError(f"{self.where(row)}: field {name!r} must be a string, got {type(value).__name__}")
            self._checked.add(("text", name))
        return self

    def is_chat(self, column: str) -> bool:
        """Whether the column holds chats (lists of messages), as its first row says."""
        return len(self) > 0 and isinstance(self.dataset[0][column], list)

    def require_messages(self, column: str, need_assistant: bool = True) -> ArrowTable:
        """The column holds chats (with an assistant turn: data._chat_problem), after `require`."""
        if self.parent is not None:
            self.parent.require_messages(column, need_assistant)
            return self
        if ("messages", column, need_assistant) not in self._checked:
            row = _first_bad_chat(self.dataset, column, need_assistant)
            if row is not None:
                problem = _chat_problem(self.dataset[row][column], need_assistant)
                raise DataError(f"{self.where(row)}: field {column!r} {problem}")
            self._checked.add(("messages", column, need_assistant))
        return self

    # ---- views --------------------------------------------------------------------------------

    def split(self, fraction: float, seed: int = 0, min_eval: int = 1) -> tuple[ArrowTable, ArrowTable]:
        """A seeded (train, held-out) split (`Dataset.train_test_split`); the held-out part has at least
        `min_eval` rows. Both parts share the source's checks."""
        n = len(self)
        if n < 2:
            raise DataError(f"{self.path}: {n} row(s); need at least 2 to hold some out for evaluation")
        n_eval = min(n - 1, max(min_eval, round(n * fraction)))
        # An indices mapping over the same Arrow file: no row is copied.
        parts = self.dataset.train_test_split(test_size=n_eval, seed=seed)
        return self._part(parts["train"]), self._part(parts["test"])

    def _part(self, dataset) -> ArrowTable:
        return ArrowTable(self.path, dataset, parent=self.parent or self)

    def select(self, columns: dict[str, str]) -> Dataset:
        """Only `columns` (new name → name in the file), e.g. in TRL's names; Arrow-level, no copy."""
        dataset = self.dataset.select_columns(list(dict.fromkeys(columns.values())))
        renames = {old: new for new, old in columns.items() if old != new}
        return dataset.rename_columns(renames) if renames else dataset

    def head(self, n: int) -> list[dict]:
        """The first n rows as dicts (samples, messages)."""
        return self.dataset.select(range(min(n, len(self)))).to_list()


def load_table(path: Path, *, text_field: str = "text", cache_dir: Path | None = None) -> ArrowTable:
    """One Arrow table of a file or of every data file under a folder. Raises DataError."""
    import datasets

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: dataset file not found")
    files = data_files(path)
    parts = [load_file(f, text_field=text_field, cache_dir=cache_dir) for f in files]
    try:
        dataset = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    except ValueError as exc:  # shards whose columns differ in names or types
        raise DataError(f"{path}: its files do not have the same columns and types ({exc})") from None
    return ArrowTable(path, dataset, files, [len(p) for p in parts])


def load_file(path: Path, *, text_field: str = "text", cache_dir: Path | None = None) -> Dataset:
    """`datasets.load_dataset` of one file, converted once into `cache_dir` (reused on later loads
    while the file is unchanged), memory-mapped. Raises DataError."""
    import datasets

    suffix = path.suffix.lower()
    if suffix not in BUILDERS:
        raise DataError(f"{path}: unsupported data format {suffix or '(none)'}; use one of {', '.join(ARROW_SUPPORTED)}")
    kwargs = {}
    if suffix == ".txt":
        kwargs["sample_by"] = "paragraph"  # one document per blank-line-separated block, as pretrain reads it
    elif suffix == ".json" and _opens_with_object(path):
        kwargs["field"] = "data"  # {"data": [...]}
    datasets.disable_progress_bars()
    try:
        dataset = datasets.load_dataset(BUILDERS[suffix], data_files=str(path), split="train",
                                        cache_dir=str(cache_dir) if cache_dir else None, **kwargs)
    except Exception as exc:  # noqa: BLE001 - pyarrow, pandas and datasets raise many types for a bad file
        raise diagnose(path, exc) from None
    if suffix == ".txt":
        dataset = _documents(dataset, text_field)
    elif suffix != ".parquet":
        _require_utf8(path, dataset)
    if not len(dataset):
        what = {".txt": "no text (documents are blank-line-separated blocks)", ".jsonl": "no JSON lines"}
        raise DataError(f"{path}: the file is empty: {what.get(suffix, 'no rows')}")
    return dataset


def _documents(dataset, text_field: str):
    """Paragraphs as documents: whitespace-only lines dropped, empty paragraphs filtered out."""
    def tidy(batch):
        return {"text": ["\n".join(line for line in t.split("\n") if line.strip()) for t in batch["text"]]}

    dataset = dataset.map(tidy, batched=True).filter(lambda batch: [bool(t) for t in batch["text"]], batched=True)
    return dataset.rename_column("text", text_field) if text_field != "text" else dataset


def _require_utf8(path: Path, dataset) -> None:
    """pyarrow's JSON and CSV readers keep bytes that are not UTF-8 in string columns, which then fail
    wherever a row is read; refuse them here, naming the row. One vectorised pass over the strings,
    once per conversion: a marker beside the cached Arrow file spares a retry from reading every page."""
    import pyarrow as pa

    marker = Path(dataset.cache_files[0]["filename"] + ".utf8-checked") if dataset.cache_files else None
    if marker is not None and marker.exists():
        return
    table = dataset.data.table
    for name in (n for n in table.column_names if _is_string(dataset.features[n])):
        offset = 0
        for chunk in table.column(name).chunks:
            try:
                chunk.validate(full=True)  # checks the UTF-8 of every string, in C++
            except pa.ArrowInvalid:
                row = next(i for i, v in enumerate(chunk.cast(pa.binary()).to_pylist()) if v is not None and not _decodes(v))
                raise DataError(f"{locate(path, offset + row)}: field {name!r} is not UTF-8 text") from None
            offset += len(chunk)
    if marker is not None:
        marker.touch()


def _decodes(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _opens_with_object(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4096).lstrip()[:1] == b"{"


def diagnose(path: Path, exc: BaseException) -> DataError:
    """DataError for a file `datasets` could not load: the first malformed line or row, found by
    re-reading the file as text (only on this error path), else `datasets`' reason."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".txt"):
            with open(path, encoding="utf-8") as f:
                found = False
                for number, line in enumerate(f, start=1):
                    if not line.strip() or suffix == ".txt":
                        continue
                    found = True
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as err:
                        return DataError(f"{path} line {number}: malformed JSON ({err.msg} at column {err.colno})")
                    if not isinstance(row, dict):
                        return DataError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
                if not found:
                    return DataError(f"{path}: the file is empty: "
                                     + ("no JSON lines" if suffix == ".jsonl" else "no text (documents are blank-line-separated blocks)"))
        elif suffix == ".json":
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            rows = data.get("data") if isinstance(data, dict) else data
            if not isinstance(rows, list):
                return DataError(f"{path}: expected a JSON list of objects (or {{\"data\": [...]}})")
            for i, row in enumerate(rows):
                if not isinstance(row, dict):
                    return DataError(f"{path} row {i + 1}: expected a JSON object, got {type(row).__name__}")
            if not rows:
                return DataError(f"{path}: the file is empty: no rows")
    except UnicodeDecodeError as err:
        return DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})")
    except json.JSONDecodeError as err:
        return DataError(f"{path} line {err.lineno}: malformed JSON ({err.msg} at column {err.colno})")
    cause = exc.__cause__ or exc
    reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return DataError(f"{path}: cannot read it as {suffix.lstrip('.')}: {reason[:300]}")


def locate(path: Path, row: int) -> str:
    """`<file> line <n>` of 0-based row `row` of a JSON lines file (blank lines skipped, as the JSON
    reader skips them), `<file> row <n>` of other formats. Reads the file up to that row only."""
    if path.suffix.lower() != ".jsonl":
        return f"{path} row {row + 1}"
    seen = -1
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                seen += 1
                if seen == row:
                    return f"{path} line {number}"
    return f"{path} row {row + 1}"


# ---- Arrow-level scans ----------------------------------------------------------------------


def _is_string(feature) -> bool:
    return getattr(feature, "dtype", None) in ("string", "large_string")


def _chunks(dataset, column: str):
    """(offset of the chunk's first row, pyarrow array) over a column, in row order, indices applied."""
    table = dataset.with_format("arrow")
    offset = 0
    for batch in table.iter(batch_size=65536):
        array = batch.column(column)
        for chunk in array.chunks if hasattr(array, "chunks") else [array]:
            yield offset, chunk
            offset += len(chunk)


def _first_null(dataset, column: str) -> int | None:
    """The first row whose `column` is null (a JSON line without that key)."""
    import pyarrow.compute as pc

    if _is_json(dataset.features[column]):
        return _first_python(dataset, column, lambda v: v is None)[0]
    if dataset.data.column(column).null_count == 0:  # no null in the whole file: none in any view of it
        return None
    for offset, chunk in _chunks(dataset, column):
        if chunk.null_count:
            return offset + pc.index(pc.is_null(chunk), True).as_py()
    return None


def _first_python(dataset, column: str, bad) -> tuple[int | None, object]:
    """(row, value) of the first value for which `bad(value)` holds, decoding SCAN_BATCH rows at a time."""
    offset = 0
    for batch in dataset.select_columns([column]).iter(batch_size=SCAN_BATCH):
        for j, value in enumerate(batch[column]):
            if bad(value):
                return offset + j, value
        offset += len(batch[column])
    return None, None


def _is_json(feature) -> bool:
    return type(feature).__name__ == "Json"


def _first_bad_chat(dataset, column: str, need_assistant: bool = True) -> int | None:
    """The first row whose chat data._chat_problem refuses: vectorised over the flattened messages when
    the column is a list of {role: string, content: string}, row by row otherwise (mixed types)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    feature = dataset.features[column]
    inner = getattr(feature, "feature", None)
    if not (isinstance(inner, dict) and _is_string(inner.get("role")) and _is_string(inner.get("content"))):
        return _first_python(dataset, column, lambda v: _chat_problem(v, need_assistant) is not None)[0]
    roles = pa.array(ROLES)
    for offset, chunk in _chunks(dataset, column):
        bad = np.asarray(pc.fill_null(pc.equal(pc.list_value_length(chunk), 0), True))
        flat, parents = pc.list_flatten(chunk), np.asarray(pc.list_parent_indices(chunk))
        role, content = pc.struct_field(flat, "role"), pc.struct_field(flat, "content")
        wrong = np.asarray(pc.or_(pc.invert(pc.fill_null(pc.is_in(role, value_set=roles), False)), pc.is_null(content)))
        bad[parents[wrong]] = True
        has_assistant = np.zeros(len(chunk), dtype=bool)
        has_assistant[parents[np.asarray(pc.fill_null(pc.equal(role, "assistant"), False))]] = True
        if need_assistant:
            bad |= ~has_assistant
        if bad.any():
            return offset + int(np.argmax(bad))
    return None
