"""What local mode shows a person: a progress bar per stage, and a summary table at the end."""

from __future__ import annotations

import sys

from refinery.api.v1alpha1 import Phase, PipelineStatus, TrainingPipeline
from refinery.core.eta import words
from refinery.core.judging import MARK, circular_footnotes

# The metrics worth a column in the summary, in the order a reader wants them.
SUMMARY_METRICS = ("initialEvalLoss", "evalLoss", "evalAccuracy", "baselineMeanReward", "meanReward", "kl",
                   "tokensPerSecond", "mfu")
# How a metric is shown when 4 decimals would not suit it (a throughput, a share).
METRIC_FORMATS = {"tokensPerSecond": "{:.0f}", "mfu": "{:.1%}"}


class ProgressDisplay:
    """One tqdm bar per stage on a terminal; elsewhere (CI, a log file) one line per event."""

    def __init__(self, stages: list[str], enabled: bool = True, stream=None) -> None:
        self._stream = stream or sys.stderr
        self._enabled = enabled
        self._bars = {}
        self._seen: dict[str, tuple] = {}
        if not enabled or not self._stream.isatty():
            return
        from tqdm import tqdm

        width = max(len(s) for s in stages)
        for position, name in enumerate(stages):
            self._bars[name] = tqdm(
                total=1000, position=position, desc=f"{name:<{width}}", file=self._stream, leave=True,
                bar_format="{desc} {bar} {percentage:3.0f}% {postfix}", dynamic_ncols=True,
            )

    def update(self, status: PipelineStatus) -> None:
        if not self._enabled:
            return
        for stage in status.stages:
            step = f"step {stage.step}/{stage.max_steps}" if stage.max_steps else ""
            if stage.phase == Phase.running and stage.estimated_remaining_seconds is not None:
                step = f"{step} eta {words(stage.estimated_remaining_seconds)}".strip()
            bar = self._bars.get(stage.name)
            if bar is not None:
                bar.n = int(1000 * (1.0 if stage.phase == Phase.succeeded else stage.progress))
                bar.set_postfix_str(f"{stage.phase} {step}".strip(), refresh=False)
                bar.refresh()
                continue
            ckpt = stage.last_checkpoint.step if stage.last_checkpoint else None
            event = (stage.phase, stage.attempt, ckpt)
            if self._seen.get(stage.name) != event:
                self._seen[stage.name] = event
                saved = f", checkpoint at step {ckpt}" if ckpt is not None else ""
                print(f"{stage.name}: {stage.phase} (attempt {stage.attempt}{saved}) {step}".rstrip(), file=self._stream)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()


def summary_table(status: PipelineStatus) -> str:
    """A plain-text table of every stage: phase, steps, attempt and the headline metrics."""
    metric_names = [m for m in SUMMARY_METRICS if any(m in s.metrics for s in status.stages)]
    header = ["STAGE", "PHASE", "STEPS", "ATTEMPT", "CKPTS", *metric_names]
    rows = [header]
    for s in status.stages:
        rows.append([
            s.name, str(s.phase), str(s.step or 0), str(s.attempt), str(s.checkpoints),
            *(METRIC_FORMATS.get(m, "{:.4f}").format(s.metrics[m]) if m in s.metrics else "-" for m in metric_names),
        ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return f"\npipeline {status.phase}\n" + "\n".join(lines)


# An eval stage's scores, in reading order; harness metrics (`task/metric`) follow, sorted.
EVAL_SCORES = ("exactMatch", "contains", "passAtK", "meanAtK", "meanReward", "winRate", "meanCompletionLength",
               "emptyFraction")


def eval_table(status: PipelineStatus, pipeline: TrainingPipeline | None = None) -> str:
    """One table per eval stage: a row per evaluated model (in `eval.models` order when the
    pipeline is given), a column per score ("-" when none). A column judged by the reward model
    an evaluated model was optimised against is marked `*`, with a footnote (core/judging.py)."""
    order = {s.name: s.eval_.models for s in pipeline.spec.stages if s.eval_} if pipeline else {}
    out = []
    for stage in status.stages:
        rows: dict[str, dict[str, float]] = {}
        for key, value in stage.metrics.items():
            model, dot, score = key.partition(".")
            if dot:
                rows.setdefault(model, {})[score] = value
        if not rows:
            continue
        models = [m for m in order.get(stage.name, []) if m in rows]
        rows = {m: rows[m] for m in [*models, *(m for m in rows if m not in models)]}
        seen = {k for r in rows.values() for k in r}
        scores = [k for k in EVAL_SCORES if k in seen] + sorted(seen - set(EVAL_SCORES))
        notes = circular_footnotes(pipeline.spec, stage.name) if pipeline else {}
        marked = {k for k in scores if any(f"{m}.{k}" in notes for m in rows)}
        header = ["MODEL", *(k + MARK if k in marked else k for k in scores)]
        table = [header, *([m, *(f"{r[k]:.4f}" if k in r else "-" for k in scores)] for m, r in rows.items())]
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
        shown = {}  # one footnote per judgement: "* rlhf.meanReward, rlhf.winRate: judged by ..."
        for metric, why in notes.items():
            if metric.partition(".")[0] in rows:
                shown.setdefault(why, []).append(metric)
        lines += [f"{MARK} {', '.join(metrics)}: {why}" for why, metrics in shown.items()]
        out.append(f"\n\n{stage.name} (held out)\n" + "\n".join(lines))
    return "".join(out)
