"""Write docs/metrics.md from the metric definitions in the code.

    python scripts/make_metrics_doc.py

Sources: `refinery_operator.metrics.METRICS` (the operator, and local mode) and
`refinery_trainer.metrics.METRICS` (stage pods). tests/unit/test_metrics_doc.py fails when the
committed page differs from this script's output.
"""

from __future__ import annotations

import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"

HEADER = """\
# Metrics reference

Generated from the code by `python scripts/make_metrics_doc.py`; do not edit by hand.

Names follow the Prometheus conventions: `refinery_` prefix, base units (seconds, ratios 0-1),
`_total` for counters; every scrape passes `promtool check metrics`.
"""

OPERATOR_INTRO = """\
## Operator (`/metrics` on port 8000, Service `<release>-metrics`)

Served by the operator (`REFINERY_METRICS_PORT`); scraped through the chart's ServiceMonitor.
Every stage series is derived from the pipeline's `.status` at scrape time, so a deleted pipeline
disappears from the scrape and an operator restart rebuilds the same series. The age of a
checkpoint is `time() - refinery_stage_last_checkpoint_timestamp_seconds`.
"""

TRAINER_INTRO = """\
## Trainer (`/metrics` on the stage container's port `metrics`, 9400)

Served by rank 0 of every stage pod (`REFINERY_METRICS_PORT`, default 9400 in a pod, off in local
mode unless set); scraped through the chart's PodMonitor, which adds `namespace`, `pod` and
`attempt` to the labels below. Gauges hold the latest logged value.
"""


def table(defs) -> str:
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for d in defs:
        name = d.name + ("_bucket/_sum/_count" if d.type == "histogram" else "")
        labels = ", ".join(f"`{label}`" for label in d.labels) or "—"
        rows.append(f"| `{name}` | {d.type} | {labels} | {d.help} |")
    return "\n".join(rows) + "\n"


def render() -> str:
    from refinery_operator import metrics as operator
    from refinery_trainer import metrics as trainer

    return "\n".join([HEADER, OPERATOR_INTRO, table(operator.METRICS), TRAINER_INTRO, table(trainer.METRICS)])


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(f"wrote {OUT}", file=sys.stderr)
