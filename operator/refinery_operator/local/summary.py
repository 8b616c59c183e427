"""The plots of local mode's end-of-run summary: one panel per stage with its training curves.

    history = read_history(Path("runs/tiny-chat/pretrain"))   # {"loss": [(25, 4.1), ...], ...}
    write_summary_plot(root, pipeline, status)                 # runs/tiny-chat/summary.png

The data is `<stage folder>/attempt-<n>/metrics.jsonl`: one JSON line per training or evaluation
log, with its step, appended by the trainer (`refinery_trainer.callbacks.MetricsLogCallback`).
The progress record cannot serve: it is throttled to a point every ~2 s and keeps only the
latest values. Attempts are read in order, a later attempt's value replacing an earlier one's at
the same step (a resumed attempt redoes the steps after its checkpoint).

Each panel plots what its stage type trains for, under the keys transformers and TRL log:
- pretrain, sft, dpo: training loss, and held-out loss at each evaluation (markers);
- reward: the same, plus held-out pairwise accuracy on a second axis;
- rlhf: mean reward of the sampled completions (and of held-out ones, when evaluated), and the
  KL divergence to the initial policy on a second axis.

matplotlib draws a `Figure` with its Agg renderer and never pyplot: no display is needed, and no
global backend is switched in the caller's process. It is imported only when a plot is drawn.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from refinery.api.rewards import WATCH_NAME
from refinery.api.v1alpha1 import PipelineStatus, StageStatus, TrainingPipeline
from refinery.client.local import metrics_rows
from refinery.core.naming import stage_dir

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SUMMARY_PLOT = "summary.png"

History = dict[str, list[tuple[int, float]]]  # log key -> [(step, value)], by step


@dataclass(frozen=True)
class Curve:
    key: str  # the log key, as the trainer logs it
    label: str
    right: bool = False  # on the panel's second y axis
    evaluation: bool = False  # one point per evaluation: markers (joined by a dotted line when more than two)


@dataclass(frozen=True)
class Panel:
    ylabel: str
    right_ylabel: str | None
    curves: tuple[Curve, ...]
    log_scale: bool = False  # losses: a fall from 8 to 0.3 and the last 10% of it both stay visible
    right_from_zero: float | None = None  # the right axis spans 0 to at least this: KL noise is no swing


_LOSS = (Curve("loss", "train loss"), Curve("eval_loss", "eval loss", evaluation=True))
PANELS: dict[str, Panel] = {
    "pretrain": Panel("loss", None, _LOSS, log_scale=True),
    "sft": Panel("loss", None, _LOSS, log_scale=True),
    "dpo": Panel("loss", None, _LOSS, log_scale=True),
    "reward": Panel("loss", "accuracy", (*_LOSS, Curve("eval_accuracy", "eval accuracy", right=True, evaluation=True)),
                    log_scale=True),
    "rlhf": Panel("mean reward", "KL (from 0)", (
        Curve("reward", "training reward (sampled)"),
        Curve("eval_reward", "eval mean reward", evaluation=True),
        Curve("held_out_reward", "held-out reward (greedy)", evaluation=True),
        Curve("kl", "KL", right=True),
    ), right_from_zero=0.5),
}
HELD_OUT_REWARD = "held_out_reward"  # not a log key: the stage's baselineMeanReward and meanReward
EVAL_BARS = ("exactMatch", "contains", "winRate", "emptyFraction")  # the eval panel's 0-1 scores


@dataclass
class StageCurves:
    name: str
    type: str
    history: History
    metrics: dict[str, float] = field(default_factory=dict)  # the stage's final figures (status)
    models: tuple[str, ...] = ()  # an eval stage's `eval.models`: the order of its bars


def read_history(stage_folder: Path) -> History:
    """Every numeric log value of a stage's attempts, by key and step; {} before any log."""
    by_key: dict[str, dict[int, float]] = {}
    for entry in metrics_rows(stage_folder):
        step = entry.get("step")
        if not isinstance(step, int):
            continue
        for key, value in entry.items():
            if key not in ("step", "time", "attempt") and _is_number(value):
                by_key.setdefault(key, {})[step] = float(value)
    return {key: sorted(points.items()) for key, points in by_key.items()}


def summary_figure(stages: list[StageCurves], title: str = "") -> Figure:
    """One panel per stage, in the order given (two columns when there are several)."""
    from matplotlib.figure import Figure

    cols = 2 if len(stages) > 1 else 1
    rows = max(1, math.ceil(len(stages) / cols))
    fig = Figure(figsize=(6.4 * cols, 3.8 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax, stage in zip(axes, stages):
        draw_panel(ax, stage)
    for ax in axes[len(stages):]:
        fig.delaxes(ax)  # an odd number of stages leaves one cell empty
    if title:
        fig.suptitle(title)
    return fig


def draw_eval_panel(ax, stage: StageCurves) -> None:
    """An eval stage: grouped bars of the 0-1 scores per model; mean reward under each model's name."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in stage.metrics.items():
        model, dot, score = key.partition(".")
        if dot:
            rows.setdefault(model, {})[score] = value
    ax.set_title(f"{stage.name} (held out)")
    rows = {m: rows[m] for m in [*(m for m in stage.models if m in rows), *(m for m in rows if m not in stage.models)]}
    scores = [s for s in EVAL_BARS if any(s in r for r in rows.values())]
    if not rows or not scores:
        ax.text(0.5, 0.5, "no eval scores", ha="center", va="center", transform=ax.transAxes, color="gray")
        return
    width = 0.8 / len(scores)
    for j, score in enumerate(scores):
        xs = [i + (j - (len(scores) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, [r.get(score, 0.0) for r in rows.values()], width, label=score, color=f"C{j}")
    ax.set_xticks(range(len(rows)), [m + (f"\nreward {r['meanReward']:.2f}" if "meanReward" in r else "")
                                     for m, r in rows.items()])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of prompts")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncols=len(scores), fontsize="small", frameon=False)


def draw_panel(ax, stage: StageCurves) -> None:
    """A stage's curves on `ax` (and on a twin axis for the `right` ones), titled with the stage."""
    if stage.type == "eval":
        return draw_eval_panel(ax, stage)
    panel = PANELS.get(stage.type, PANELS["pretrain"])
    if stage.type == "rlhf":
        panel = rlhf_panel(panel, stage.history)
    ax.set_title(stage.name if stage.name == stage.type else f"{stage.name} ({stage.type})")
    ax.set_xlabel("step")
    ax.set_ylabel(panel.ylabel + (" (log scale)" if panel.log_scale else ""))
    if panel.log_scale:
        from matplotlib.ticker import LogFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(LogFormatter())  # 0.1, 1, 6: not 10^-1, 10^0, 6x10^0
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
    ax.grid(alpha=0.3)
    right = None
    lines = []
    for color, curve in enumerate(panel.curves):
        points = stage.history.get(curve.key)
        if not points:
            continue
        if curve.right and right is None:
            right = ax.twinx()
            right.set_ylabel(panel.right_ylabel)
        steps, values = zip(*points)
        if curve.evaluation:  # before and after training only: two dots, not a trend
            style = {"marker": "o", "linestyle": ":" if len(points) > 2 else "none"}
        else:
            style = {"marker": "." if len(points) <= 50 else None}
        (line,) = (right if curve.right else ax).plot(steps, values, label=curve.label, color=f"C{color}", **style)
        lines.append(line)
        if curve.right and panel.right_from_zero is not None:
            right.set_ylim(0, max(panel.right_from_zero, 1.25 * max(values)))
    if lines:  # below the panel: never over a curve of either axis
        ax.legend(handles=lines, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=min(len(lines), 3),
                  fontsize="small", frameon=False)
    else:
        ax.text(0.5, 0.5, "no training logs", ha="center", va="center", transform=ax.transAxes, color="gray")


def rlhf_panel(panel: Panel, history: History) -> Panel:
    """The rlhf panel with what this stage logged besides: each reward of `rl.rewards` on its own
    (TRL's `rewards/<name>/mean`), and the held-out watch's audit and exact match."""
    names = sorted(k for k in history if k.startswith("rewards/") and k.endswith("/mean") and k != f"rewards/{WATCH_NAME}/mean")
    extra = [Curve(k, f"reward {k.split('/')[1]} (sampled)") for k in names] if len(names) > 1 else []
    extra += [Curve(k, label, evaluation=True) for k, label in (("held_out_audit", "held-out audit (greedy)"),
                                                                 ("held_out_exact_match", "held-out exact match"))
              if k in history]
    return Panel(panel.ylabel, panel.right_ylabel, (*panel.curves[:-1], *extra, panel.curves[-1]),
                 right_from_zero=panel.right_from_zero)


def write_summary_plot(root: Path, pipeline: TrainingPipeline, status: PipelineStatus) -> Path | None:
    """Draw every stage's curves into `<root>/summary.png`; its path, or None (with a warning) when
    matplotlib is missing."""
    stages = []
    for stage in pipeline.spec.stages:
        run = (status.stage(stage.name) or StageStatus(name=stage.name)).run
        folder = Path(stage_dir(str(root), stage.name, run))
        current = status.stage(stage.name) or StageStatus(name=stage.name)
        history = read_history(folder)
        if {"baselineMeanReward", "meanReward"} <= current.metrics.keys() and current.step and HELD_OUT_REWARD not in history:
            # Held-out reward before and after training (greedy, on the same prompts), beside the training reward.
            history[HELD_OUT_REWARD] = [(0, current.metrics["baselineMeanReward"]), (current.step, current.metrics["meanReward"])]
        models = tuple(stage.eval_.models) if stage.eval_ else ()
        stages.append(StageCurves(stage.name, str(stage.type), history, dict(current.metrics), models))
    try:
        fig = summary_figure(stages, title=f"{pipeline.metadata.name}: {status.phase}")
    except ImportError as exc:
        print(f"warning: no summary plot ({exc}); install matplotlib (`pip install matplotlib`)", file=sys.stderr)
        return None
    path = root / SUMMARY_PLOT
    tmp = root / f".{SUMMARY_PLOT}.tmp"
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, path)  # a viewer never reads half a file
    return path


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
