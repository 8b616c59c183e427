"""`data.mixture`: several datasets of one stage, mixed by weight with `datasets.interleave_datasets`.

    table = MixedTable([(load_table(a), 3.0), (load_table(b), 1.0)], seed=0)
    train, held_out = table.split(0.1, seed=0)     # each dataset split on its own, then mixed
    dataset = train.select({"prompt": "q", "completion": "a"})

Semantics, as LLaMA-Factory's `interleave_under` and TRL users' `interleave_datasets` recipes: each
training row is drawn from dataset i with probability weight_i / sum(weights) (seeded), until the
first dataset runs out (`first_exhausted`). So the proportions are the weights, no row is ever
repeated, and the larger datasets' unused rows are not trained on; `all_exhausted` would instead
repeat the small datasets until every one is used up, which turns a weight into an epoch count
the user did not ask for. The held-out part mixes each dataset's own held-out split with the same
weights, so evalLoss measures the mixture the stage trains on. Checks (`require*`) run on every
dataset, so a message still names the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .arrow_data import ArrowTable
from .errors import DataError

STOPPING = "first_exhausted"


@dataclass
class MixedTable:
    """Datasets with weights; `select` returns their interleaving as one `datasets.Dataset`."""

    parts: list[tuple[ArrowTable, float]]
    seed: int = 0

    @property
    def path(self) -> Path:
        return self.parts[0][0].path

    @property
    def column_names(self) -> list[str]:
        """The columns every dataset has, in the first one's order."""
        first, *others = (t for t, _ in self.parts)
        return [c for c in first.column_names if all(t.has_column(c) for t in others)]

    def has_column(self, name: str) -> bool:
        return all(t.has_column(name) for t, _ in self.parts)

    def require(self, *columns: str, hint: str = "") -> MixedTable:
        for table, _ in self.parts:
            table.require(*columns, hint=hint)
        return self

    def require_text(self, *columns: str) -> MixedTable:
        for table, _ in self.parts:
            table.require_text(*columns)
        return self

    def is_chat(self, column: str) -> bool:
        return self.parts[0][0].is_chat(column)

    def require_messages(self, column: str, need_assistant: bool = True) -> MixedTable:
        for table, _ in self.parts:
            table.require_messages(column, need_assistant)
        return self

    def split(self, fraction: float, seed: int = 0) -> tuple[MixedTable, MixedTable]:
        halves = [(table.split(fraction, seed=seed), weight) for table, weight in self.parts]
        return (MixedTable([(t, w) for (t, _), w in halves], self.seed),
                MixedTable([(h, w) for (_, h), w in halves], self.seed))

    def select(self, columns: dict[str, str]):
        """The mixture of every dataset's `columns` (new name → name in its file)."""
        from datasets import interleave_datasets

        parts = [table.select(columns) for table, _ in self.parts]
        features = parts[0].features
        try:  # JSON strings and CSV large_strings are the same text: one schema for all
            parts = [p if p.features == features else p.cast(features) for p in parts]
        except (ValueError, TypeError) as exc:
            raise DataError(f"the datasets of data.mixture have different types in columns {sorted(columns.values())}: "
                            f"{exc}") from None
        total = sum(w for _, w in self.parts)
        return interleave_datasets(parts, probabilities=[w / total for _, w in self.parts], seed=self.seed,
                                   stopping_strategy=STOPPING)

    def head(self, n: int) -> list[dict]:
        return self.parts[0][0].head(n)

    def lineage(self, uris: list[str]) -> dict:
        """What the stage trained on: each dataset's URI, weight, share and rows, and how they were mixed."""
        total = sum(w for _, w in self.parts)
        return {
            "mixture": [{"path": uri, "weight": w, "share": round(w / total, 6), "rows": len(t)}
                        for uri, (t, w) in zip(uris, self.parts, strict=True)],
            "seed": self.seed,
            "stoppingStrategy": STOPPING,
        }
