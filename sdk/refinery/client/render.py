"""Text views of pipelines, for a terminal: `refinery get`'s table, `refinery describe`, and the
summary tables local mode prints at the end of a run. Pure: models in, text out."""

from __future__ import annotations

from datetime import datetime, timezone

from ..api.v1alpha1 import Phase, PipelineStatus, TrainingPipeline
from ..core.accounting import parse_time
from ..core.eta import words
from ..core.judging import MARK, circular_footnotes

# The metrics worth a column in the summary, in the order a reader wants them.
SUMMARY_METRICS = ("initialEvalLoss", "evalLoss", "evalAccuracy", "baselineMeanReward", "meanReward", "kl",
                   "tokensPerSecond", "mfu")
# How a metric is shown when 4 decimals would not suit it (a throughput, a share).
METRIC_FORMATS = {"tokensPerSecond": "{:.0f}", "mfu": "{:.1%}"}


def table(rows: list[list[str]], indent: str = "") -> str:
    """Columns padded to their widest cell, two spaces apart (kubectl's look)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def age(stamp: str | None, now: datetime) -> str:
    """kubectl's ages: 45s, 12m, 3h, 5d; `-` when unknown."""
    when = parse_time(stamp)
    if when is None:
        return "-"
    s = max(0, int((now - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= 2 * size or (unit == "m" and s >= size):
            return f"{s // size}{unit}"
    return f"{s}s"


def metric(name: str, value: float) -> str:
    return METRIC_FORMATS.get(name, "{:.4g}").format(value)


def pipelines_table(pipelines: list[TrainingPipeline], now: datetime | None = None) -> str:
    """The CRD's printer columns (`kubectl get tp`), for `refinery get`."""
    now = now or datetime.now(timezone.utc)
    rows = [["NAME", "STAGE", "PHASE", "PROGRESS", "CKPT-STEP", "CKPT-AGE", "ETA", "AGE"]]
    for p in pipelines:
        s = p.status or PipelineStatus()
        created = (p.metadata.model_extra or {}).get("creationTimestamp")
        rows.append([p.metadata.name, s.current_stage or "", str(s.phase), s.progress or "",
                     "" if s.checkpoint_step is None else str(s.checkpoint_step),
                     "" if s.checkpoint_time is None else age(s.checkpoint_time, now), s.eta or "", age(created, now)])
    return table(rows)


def describe(pipeline: TrainingPipeline, events: list | None = None, now: datetime | None = None) -> str:
    """`refinery describe`: the pipeline, its stages, conditions, failures, lineage, sources, eval
    scores and Events — everything from `.status` (and the Events), nothing read from the volume."""
    now = now or datetime.now(timezone.utc)
    spec, status = pipeline.spec, pipeline.status or PipelineStatus()
    meta = pipeline.metadata
    created = (meta.model_extra or {}).get("creationTimestamp")
    done = f"{status.progress} stages done" if status.progress else ""
    running = f"stage {status.current_stage}" if status.current_stage and status.phase == Phase.running else ""
    eta = f"ETA {status.eta}" if status.eta else ""
    storage = (f"claim {spec.storage.claim_name}" if spec.storage.claim_name
               else f"a new claim of {spec.storage.claim.size}" if spec.storage.claim else "-")
    head = [
        ["Name:", meta.name],
        ["Namespace:", meta.namespace or "(local mode)"],
        ["Created:", f"{created} ({age(created, now)} ago)" if created else "-"],
        ["Phase:", " ".join([str(status.phase), f"({'; '.join(x for x in (running, done, eta) if x)})" if running or done or eta else ""]).strip()],
        ["Suspend:", str(spec.suspend).lower()],
        ["Image:", spec.image],
        ["Storage:", storage],
    ]
    if spec.export:
        head.append(["Export:", f"{spec.export.stage} -> {spec.export.to}"])
    out = [table(head)]
    out.append("Stages:\n" + stages_table(pipeline, status, now))
    if status.conditions:
        rows = [["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]]
        rows += [[c.type, c.status, c.reason, age(c.last_transition_time, now), c.message] for c in status.conditions]
        out.append("Conditions:\n" + table(rows, "  "))
    failures = [s for s in status.stages if s.last_failure]
    if failures:
        out.append("Last failures:\n" + "\n".join(
            f"  {s.name} attempt {f.attempt or '?'}: {f.class_} {f.reason}: {f.message}" + (f" (node {f.node})" if f.node else "")
            for s in failures for f in [s.last_failure]))
    out.append("Lineage:\n" + lineage(pipeline, status))
    if status.sources:
        rows = [["URI", "RESOLVED", "FILES", "BYTES", "FETCHED"]]
        rows += [[s.uri, s.resolved or "-", str(s.files), str(s.bytes), age(s.fetched_at, now)] for s in status.sources]
        out.append("Sources:\n" + table(rows, "  "))
    metrics = [(s.name, {k: v for k, v in s.metrics.items() if "." not in k}) for s in status.stages]
    if any(m for _, m in metrics):
        out.append("Metrics (latest):\n" + "\n".join(
            f"  {name}: " + ", ".join(f"{k} {metric(k, v)}" for k, v in sorted(m.items())) for name, m in metrics if m))
    scores = eval_table(status, pipeline).strip("\n")
    if scores:
        out.append("Eval:\n" + "\n".join(f"  {line}" for line in scores.splitlines()))
    if events is not None:
        rows = [["TYPE", "REASON", "AGE", "MESSAGE"]]
        rows += [[e.type, e.reason, age(e.time, now) + (f" (x{e.count})" if e.count > 1 else ""), e.message] for e in events]
        out.append("Events:\n" + (table(rows, "  ") if events else "  <none>"))
    return "\n\n".join(out) + "\n"


def stages_table(pipeline: TrainingPipeline, status: PipelineStatus, now: datetime) -> str:
    rows = [["NAME", "TYPE", "PHASE", "PROGRESS", "STEP", "ETA", "ATTEMPT", "RESTARTS", "CHECKPOINT", "JOB"]]
    for stage in pipeline.spec.run_stages:
        s = status.stage(stage.name)
        if s is None:
            rows.append([stage.name, str(stage.type), "Pending", "-", "-", "-", "-", "-", "-", "-"])
            continue
        progress = 1.0 if s.phase == Phase.succeeded else s.progress
        step = f"{s.step or 0}/{s.max_steps}" if s.max_steps else (str(s.step) if s.step is not None else "-")
        eta = words(s.estimated_remaining_seconds) if s.phase == Phase.running else None
        ckpt = (f"step {s.last_checkpoint.step} ({age(s.last_checkpoint.time, now)} ago)" if s.last_checkpoint else "-")
        rows.append([stage.name, str(stage.type), str(s.phase), f"{progress:.0%}", step, eta or "-", str(s.attempt),
                     str(s.restarts), ckpt, s.job_name or "-"])
    return table(rows, "  ")


def lineage(pipeline: TrainingPipeline, status: PipelineStatus) -> str:
    """Each stage's inputs (as resolved by the operator once it started) and its output."""
    lines = []
    for stage in pipeline.spec.run_stages:
        s = status.stage(stage.name)
        parents = [p for p in (stage.from_, stage.reward_model) if p]
        named = f"from {stage.from_}" if stage.from_ else ("a new model" if stage.model is not None else "")
        if stage.reward_model:
            named += f", reward model {stage.reward_model}"
        if stage.eval_ is not None:
            named = f"scores {', '.join(stage.eval_.models)}"
        inputs = s.inputs if s is not None else None
        resolved = [p for p in ((inputs.model, inputs.reward_model) if inputs else ()) if p]
        line = f"  {stage.name}: {named or 'after ' + ', '.join(parents)}"
        if resolved:
            line += f" ({', '.join(resolved)})"
        if s is not None and s.output:
            line += f" -> {s.output}"
        lines.append(line)
    return "\n".join(lines)


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
