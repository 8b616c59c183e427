"""The summary plot of local mode, without training: the history it reads from each attempt's
metrics.jsonl, and one panel per stage with that stage's curves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refinery.api.run import METRICS_LOG_FILE
from refinery.api.v1alpha1 import PipelineStatus
from refinery_operator.local.summary import StageCurves, read_history, summary_figure, write_summary_plot
from tests.builders import chat_pipeline

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_log(path: Path, lines: list[dict | str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))


# ---- the history behind the plot ---------------------------------------------------------------------


def test_history_merges_attempts_in_order_and_the_newer_attempt_wins(tmp_path):
    stage = tmp_path / "pretrain"
    write_log(stage / "attempt-1" / METRICS_LOG_FILE, [
        {"step": 0, "time": 1.0, "eval_loss": 6.0},
        {"step": 10, "time": 2.0, "loss": 5.0, "learning_rate": 1e-3},
        {"step": 20, "time": 3.0, "loss": 4.0},
        {"step": 30, "time": 4.0, "loss": 3.9},  # after the last checkpoint (20): redone by attempt 2
        '{"step": 40, "lo',  # the kill cut this line short
    ])
    write_log(stage / "attempt-2" / METRICS_LOG_FILE, [
        {"step": 30, "time": 9.0, "loss": 3.5, "grad_norm": None},  # a NaN is written as null
        {"step": 40, "time": 10.0, "loss": 3.0},
    ])
    write_log(stage / "attempt-10" / METRICS_LOG_FILE, [{"step": 40, "time": 20.0, "loss": 2.5}])  # 10 after 2
    history = read_history(stage)
    assert history["loss"] == [(10, 5.0), (20, 4.0), (30, 3.5), (40, 2.5)]
    assert history["eval_loss"] == [(0, 6.0)]
    assert history["learning_rate"] == [(10, 1e-3)]
    assert "grad_norm" not in history and "time" not in history and "step" not in history


def test_a_stage_that_never_logged_has_no_history(tmp_path):
    assert read_history(tmp_path / "never-started") == {}
    (tmp_path / "started" / "attempt-1").mkdir(parents=True)
    assert read_history(tmp_path / "started") == {}


# ---- the plot ------------------------------------------------------------------------------------------


def synthetic(steps=(10, 20, 30)) -> list[StageCurves]:
    loss = {"loss": [(s, 5.0 / s) for s in steps], "eval_loss": [(0, 6.0), (steps[-1], 1.0)]}
    return [
        StageCurves("base", "pretrain", loss),
        StageCurves("chat", "sft", loss),
        StageCurves("rm", "reward", {**loss, "eval_accuracy": [(0, 0.5), (steps[-1], 0.9)]}),
        StageCurves("policy", "rlhf", {"reward": [(s, 0.1 * s) for s in steps], "kl": [(s, 0.01 * s) for s in steps]}),
        StageCurves("prefs", "dpo", {}),
    ]


def panels(fig) -> dict[str, object]:
    """The stage panels by title (twin axes for a second y scale have no title)."""
    return {ax.get_title(): ax for ax in fig.axes if ax.get_title()}


def legend(ax) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_the_summary_has_one_panel_per_stage_with_its_curves():
    fig = summary_figure(synthetic(), title="chat: Succeeded")
    by_title = panels(fig)
    assert list(by_title) == ["base (pretrain)", "chat (sft)", "rm (reward)", "policy (rlhf)", "prefs (dpo)"]
    assert fig.get_suptitle() == "chat: Succeeded"

    assert legend(by_title["base (pretrain)"]) == ["train loss", "eval loss"]
    assert legend(by_title["rm (reward)"]) == ["train loss", "eval loss", "eval accuracy"]
    assert legend(by_title["policy (rlhf)"]) == ["training reward (sampled)", "KL"]
    assert by_title["prefs (dpo)"].get_legend() is None  # nothing logged: says so instead
    assert [t.get_text() for t in by_title["prefs (dpo)"].texts] == ["no training logs"]

    train = by_title["base (pretrain)"].get_lines()[0]
    assert list(train.get_xdata()) == [10, 20, 30] and list(train.get_ydata()) == [0.5, 0.25, 5.0 / 30]
    assert by_title["base (pretrain)"].get_yscale() == "log"  # losses
    assert by_title["policy (rlhf)"].get_yscale() == "linear"
    # KL and accuracy have their own y axis: not on the panel's own axes
    assert [l.get_label() for l in by_title["policy (rlhf)"].get_lines()] == ["training reward (sampled)"]


@pytest.mark.parametrize(("count", "grid"), [(1, (1, 1)), (2, (1, 2)), (4, (2, 2)), (5, (3, 2))])
def test_panels_are_laid_out_two_per_row(count, grid):
    fig = summary_figure(synthetic()[:count])
    assert len(panels(fig)) == count
    rows, cols = grid
    width, height = fig.get_size_inches()
    assert width == pytest.approx(6.4 * cols) and height == pytest.approx(3.8 * rows)


def test_the_plot_is_written_next_to_status_json(tmp_path):
    pipeline = chat_pipeline("chat").obj()
    root = tmp_path / "chat"
    write_log(root / "pretrain" / "attempt-1" / METRICS_LOG_FILE, [{"step": s, "loss": 5.0 / s} for s in (5, 10, 15)])
    path = write_summary_plot(root, pipeline, PipelineStatus())
    assert path == root / "summary.png"
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert not list(root.glob(".*.tmp"))


def test_rlhf_shows_held_out_reward_beside_training_reward_and_kl_from_zero():
    steps = [25, 50, 75]
    history = {"reward": [(s, 1 + s / 25) for s in steps], "kl": [(s, 0.27 + 0.01 * (s % 2)) for s in steps],
               "held_out_reward": [(0, 0.88), (75, 4.41)]}
    fig = summary_figure([StageCurves("rlhf", "rlhf", history)])
    (panel,) = panels(fig).values()
    assert legend(panel) == ["training reward (sampled)", "held-out reward (greedy)", "KL"]
    kl_axis = next(ax for ax in fig.axes if ax is not panel)
    low, high = kl_axis.get_ylim()
    assert low == 0 and high >= 0.5  # a KL of 0.27 +- 0.01 is a flat line, not a swing


def test_rlhf_with_several_rewards_plots_each_and_the_held_out_audit_and_exact_match():
    steps = [10, 20]
    history = {"reward": [(s, 1.0) for s in steps], "kl": [(s, 0.1) for s in steps],
               "rewards/exactMatch/mean": [(10, 0.6), (20, 0.9)], "rewards/format/mean": [(10, 1.0), (20, 1.0)],
               "rewards/completion_watch/mean": [(10, 0.0), (20, 0.0)],  # the zero-weight watch is not a reward
               "held_out_reward": [(0, 0.7), (20, 1.0)], "held_out_audit": [(0, 0.7), (10, 0.8), (20, 0.95)],
               "held_out_exact_match": [(0, 0.69), (10, 0.8), (20, 1.0)]}
    (panel,) = panels(summary_figure([StageCurves("rlhf", "rlhf", history)])).values()
    assert legend(panel) == ["training reward (sampled)", "held-out reward (greedy)", "reward exactMatch (sampled)",
                             "reward format (sampled)", "held-out audit (greedy)", "held-out exact match", "KL"]


def test_the_eval_panel_has_a_bar_per_model_and_score_in_eval_order():
    metrics = {"rlhf.exactMatch": 1.0, "rlhf.meanReward": 4.69, "rlhf.winRate": 0.68,
               "sft.exactMatch": 0.64, "sft.meanReward": 1.09, "sft.winRate": 0.5}
    fig = summary_figure([StageCurves("eval", "eval", {}, metrics, ("sft", "rlhf"))])
    (panel,) = panels(fig).values()
    assert panel.get_title() == "eval (held out)" and legend(panel) == ["exactMatch", "winRate"]
    assert [t.get_text() for t in panel.get_xticklabels()] == ["sft\nreward 1.09", "rlhf\nreward 4.69"]
    assert [round(p.get_height(), 2) for p in panel.patches] == [0.64, 1.0, 0.5, 0.68]
