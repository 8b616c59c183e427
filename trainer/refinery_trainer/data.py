"""Reading a stage's dataset into rows, with errors that name the file, line and field.

Formats (by extension): `.jsonl` (one JSON object per line), `.json` (a list of objects, or
`{"data": [...]}`), `.parquet`, and `.txt` (pretrain: one document per blank-line-separated block,
exposed as rows with one text column). No torch here; `datasets` only for parquet.

    table = read_table(path, text_field="text")
    table.require("prompt", "completion", hint="data.promptField")
    train, held_out = table.split(0.1, seed=0)
    rows = train.select({"prompt": "question", "completion": "answer"})   # TRL column names
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError

SUPPORTED = (".jsonl", ".json", ".parquet", ".txt")


@dataclass
class Table:
    """Rows of one data file, each remembering the line (or row number) it came from."""

    path: Path
    rows: list[dict]
    lines: list[int] = field(default_factory=list)  # 1-based source line (jsonl, txt) or row number
    unit: str = "line"  # how `lines` reads in messages: "line" or "row"

    def __post_init__(self) -> None:
        if not self.lines:
            self.lines = list(range(1, len(self.rows) + 1))

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, i: int) -> str:
        return f"{self.path} {self.unit} {self.lines[i]}"

    def has_column(self, name: str) -> bool:
        """Whether the first row has `name` (formats are uniform; `require` checks every row)."""
        return bool(self.rows) and name in self.rows[0]

    def require(self, *columns: str, hint: str = "") -> Table:
        """Every row has every column, as a non-null value. Returns self; raises DataError."""
        if not self.rows:
            raise DataError(f"{self.path}: no rows")
        for i, row in enumerate(self.rows):
            for name in columns:
                if row.get(name) is None:
                    seen = ", ".join(sorted(row)) or "none"
                    tip = f" (set {hint} if the column has another name)" if hint else ""
                    raise DataError(f"{self.where(i)}: missing field {name!r}{tip}; fields present: {seen}")
        return self

    def require_text(self, *columns: str) -> Table:
        """The columns hold strings (after `require`)."""
        for i, row in enumerate(self.rows):
            for name in columns:
                if not isinstance(row[name], str):
                    raise DataError(f"{self.where(i)}: field {name!r} must be a string, got {type(row[name]).__name__}")
        return self

    def is_chat(self, column: str) -> bool:
        """Whether the column holds chats (lists of messages), as its first row says."""
        return bool(self.rows) and isinstance(self.rows[0].get(column), list)

    def require_messages(self, column: str, need_assistant: bool = True) -> Table:
        """The column holds chats: lists of {role, content} with string values and an assistant turn
        (the part a chat model learns to write; not for a preference pair's prompt), after `require`."""
        for i, row in enumerate(self.rows):
            problem = _chat_problem(row[column], need_assistant)
            if problem:
                raise DataError(f"{self.where(i)}: field {column!r} {problem}")
        return self

    def select(self, columns: dict[str, str]) -> list[dict]:
        """Rows with only `columns` (new name → name in the file), e.g. to TRL's conventions."""
        return [{new: row[old] for new, old in columns.items()} for row in self.rows]

    def split(self, fraction: float, seed: int = 0, min_eval: int = 1) -> tuple[Table, Table]:
        """A seeded (train, held-out) split; the held-out part has at least `min_eval` rows."""
        if len(self.rows) < 2:
            raise DataError(f"{self.path}: {len(self.rows)} row(s); need at least 2 to hold some out for evaluation")
        order = list(range(len(self.rows)))
        random.Random(seed).shuffle(order)
        n_eval = min(len(order) - 1, max(min_eval, round(len(order) * fraction)))
        held, train = sorted(order[:n_eval]), sorted(order[n_eval:])
        return self._subset(train), self._subset(held)

    def _subset(self, idx: list[int]) -> Table:
        return Table(self.path, [self.rows[i] for i in idx], [self.lines[i] for i in idx], self.unit)


def preference_columns(spec, train: Table, held_out: Table) -> dict[str, str]:
    """TRL column name → the file's column for preference pairs (reward and dpo stages), checked in
    both tables: `chosen`/`rejected` always, `prompt` when the file has that column (otherwise
    chosen/rejected are whole texts). `spec` is the stage's DataSpec."""
    columns = {"chosen": spec.chosen_field, "rejected": spec.rejected_field}
    if train.has_column(spec.prompt_field):
        columns = {"prompt": spec.prompt_field, **columns}
    hint = "data.chosenField/data.rejectedField" + ("/data.promptField" if "prompt" in columns else "")
    chat = train.has_column(spec.chosen_field) and train.is_chat(spec.chosen_field)
    for table in (train, held_out):
        table.require(*columns.values(), hint=hint)
        if chat:  # TRL's conversational format: the prompt's turns, then chosen/rejected end with the assistant's answer
            table.require_messages(spec.chosen_field).require_messages(spec.rejected_field)
            if "prompt" in columns:
                table.require_messages(spec.prompt_field, need_assistant=False)
        else:
            table.require_text(*columns.values())
    return columns


def is_chat_pairs(spec, table) -> bool:
    """Whether preference pairs are conversational (chosen/rejected as lists of messages)."""
    return table.has_column(spec.chosen_field) and table.is_chat(spec.chosen_field)


ROLES = ("system", "user", "assistant", "tool")


def _chat_problem(chat, need_assistant: bool = True) -> str | None:
    """Why `chat` is not a list of {role, content} messages (with an assistant turn), or None."""
    if not isinstance(chat, list) or not chat:
        return f"must be a non-empty list of {{role, content}} messages, got {type(chat).__name__}"
    for j, message in enumerate(chat):
        if not isinstance(message, dict):
            return f"[{j}] must be a {{role, content}} object, got {type(message).__name__}"
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                got = "nothing" if message.get(key) is None else type(message[key]).__name__
                return f"[{j}].{key} must be a string, got {got}"
        if message["role"] not in ROLES:
            return f"[{j}].role {message['role']!r} is not one of {', '.join(ROLES)}"
    if need_assistant and not any(m["role"] == "assistant" for m in chat):
        return "has no assistant message (the part the model learns to write)"
    return None


def read_table(path: str | Path, *, text_field: str = "text") -> Table:
    """Read a data file; `.txt` becomes rows `{text_field: document}`. Raises DataError, also for a
    file without a single row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: dataset file not found" + (" (it is a folder)" if path.is_dir() else ""))
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED:
        raise DataError(f"{path}: unsupported data format {suffix or '(none)'}; use one of {', '.join(SUPPORTED)}")
    try:
        if suffix == ".txt":
            table = _read_txt(path, text_field)
        elif suffix == ".jsonl":
            table = _read_jsonl(path)
        elif suffix == ".json":
            table = _read_json(path)
        else:
            table = _read_parquet(path)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not table.rows:
        what = {".txt": "no text (documents are blank-line-separated blocks)", ".jsonl": "no JSON lines"}
        raise DataError(f"{path}: the file is empty: {what.get(suffix, 'no rows')}")
    return table


def _read_txt(path: Path, text_field: str) -> Table:
    rows, lines, block, start = [], [], [], 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines() + [""], start=1):
        if line.strip():
            if not block:
                start = number
            block.append(line)
        elif block:
            rows.append({text_field: "\n".join(block)})
            lines.append(start)
            block = []
    return Table(path, rows, lines)


def _read_jsonl(path: Path) -> Table:
    rows, lines = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {number}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
            lines.append(number)
    return Table(path, rows, lines)


def _read_json(path: Path) -> Table:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} line {exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects (or {{\"data\": [...]}})")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataError(f"{path} row {i + 1}: expected a JSON object, got {type(row).__name__}")
    return Table(path, data, unit="row")


def _read_parquet(path: Path) -> Table:
    # pyarrow directly, not `datasets`: a pretrain stage runs with `datasets` hidden (startup.py).
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise DataError(f"{path}: cannot read parquet: {exc}") from None
    return Table(path, rows, unit="row")
