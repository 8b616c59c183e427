"""eval: score the final models of other stages; never trains.

    refinery-train run --config stage.yaml      # stage.type: eval

For each model in `eval.models` (the planner resolved their paths into `run.models`):
- `eval.generate`: answer every held-out prompt (greedy, or sampled at `temperature`), then
  `exactMatch` and `contains` against the reference answers, `meanReward` under the reward
  model `eval.generate.rewardModel`, `winRate` against the baseline model's answers judged by
  that reward model, and the completion statistics (`meanCompletionLength`, `emptyFraction`,
  `truncatedFraction`) that show a collapsed policy;
- `eval.harness`: lm-evaluation-harness tasks (`evaluation/harness.py`), `<task>/<metric>`.

Metrics are flat, `<model>.<score>` (`rlhf.exactMatch`), so a gate reads them like any other.
Every answer goes to `<stage_dir>/answers.jsonl` (model, prompt, reference, answer, reward) so a
score can be checked by eye; the table of scores to `<stage_dir>/eval.json`.
"""

from __future__ import annotations

import json
import logging
import random

from refinery_operator.api.evaluation import EvalSpec, GenerateEval

from ..checkpoints import atomic_write_text
from ..context import StageContext
from ..data import Table, read_table
from ..errors import ModelError
from ..evaluation.completions import completion_stats
from ..evaluation.generative import contains, exact_match, mean, win_rate

log = logging.getLogger(__name__)
ANSWERS_FILE = "answers.jsonl"
EVAL_FILE = "eval.json"


def run(ctx: StageContext) -> dict[str, float]:
    spec: EvalSpec = ctx.stage.eval_
    paths = model_paths(ctx, spec)
    metrics: dict[str, float] = {}
    answers: list[dict] = []
    if spec.generate is not None:
        metrics.update(generative_scores(ctx, spec, paths, answers))
    if spec.harness is not None:
        from ..evaluation.harness import harness_scores

        for name in spec.models:
            metrics.update({f"{name}.{k}": v for k, v in harness_scores(ctx, spec.harness, paths[name]).items()})
            ctx.report(metrics=dict(metrics))
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(ctx.stage_dir / ANSWERS_FILE, "".join(json.dumps(a, sort_keys=True) + "\n" for a in answers))
    atomic_write_text(ctx.stage_dir / EVAL_FILE, json.dumps(by_model(metrics, spec.models), indent=2, sort_keys=True) + "\n")
    ctx.output = str(ctx.stage_dir / EVAL_FILE)  # an eval stage has no model of its own
    return metrics


def model_paths(ctx: StageContext, spec: EvalSpec) -> dict:
    given = ctx.run.models or {}
    missing = [name for name in spec.referenced_stages if name not in given]
    if missing:
        raise ModelError(f"stage {ctx.stage.name!r}: the run names no model for {', '.join(missing)}")
    return {name: ctx.model_path(given[name], f"the model of stage {name!r}") for name in spec.referenced_stages}


def load_prompts(ctx: StageContext, gen: GenerateEval) -> Table:
    table = read_table(ctx.data_file(gen.path))
    table.require(gen.prompt_field, gen.reference_field, hint="eval.generate.promptField / referenceField")
    table.require_text(gen.prompt_field, gen.reference_field)
    return table if gen.limit is None else Table(table.path, table.rows[: gen.limit], table.lines[: gen.limit], table.unit)


def generative_scores(ctx: StageContext, spec: EvalSpec, paths: dict, answers: list[dict]) -> dict[str, float]:
    """`<model>.<score>` for every evaluated model (and the baseline's answers, to judge the win rate)."""
    import torch

    from ..scoring import generate_counted, score
    from .rlhf import load_reward_model_from

    gen = spec.generate
    table = load_prompts(ctx, gen)
    prompts = [r[gen.prompt_field] for r in table.rows]
    references = [r[gen.reference_field] for r in table.rows]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    judge = None
    if gen.reward_model:
        reward_model, reward_tokenizer = load_reward_model_from(ctx, paths[gen.reward_model])
        judge = (reward_model.to(device), reward_tokenizer)
    rewards: dict[str, list[float]] = {}
    metrics: dict[str, float] = {}
    names = [*spec.models, *([gen.baseline] if gen.baseline and gen.baseline not in spec.models else [])]
    for i, name in enumerate(names):
        model, tokenizer = ctx.load_causal_lm(paths[name])
        model.to(device)
        tokenizer.padding_side = "left"
        random.seed(gen.seed)
        torch.manual_seed(gen.seed)
        texts, counts = generate_counted(model, tokenizer, prompts, gen.max_new_tokens, temperature=gen.temperature or None)
        del model
        row = {
            "exactMatch": mean([exact_match(a, r) for a, r in zip(texts, references)]),
            "contains": mean([contains(a, r) for a, r in zip(texts, references)]),
            **completion_stats(counts, gen.max_new_tokens, texts),
        }
        if judge is not None:
            rewards[name] = score(*judge, prompts, texts)
            row["meanReward"] = mean(rewards[name])
        for j, (p, ref, a) in enumerate(zip(prompts, references, texts)):
            answers.append({"model": name, "prompt": p, "reference": ref, "answer": a,
                            **({"reward": rewards[name][j]} if name in rewards else {})})
        if name in spec.models:
            metrics.update({f"{name}.{k}": float(v) for k, v in row.items()})
        log.info("eval: %s on %d held-out prompts: %s", name, len(prompts), _fmt(row))
        ctx.report(progress=min(0.99, (i + 1) / (len(names) + (1 if spec.harness else 0))), metrics=dict(metrics))
    if gen.baseline:
        for name in spec.models:
            metrics[f"{name}.winRate"] = win_rate(rewards[name], rewards[gen.baseline])
    return metrics


def by_model(metrics: dict[str, float], models: list[str]) -> dict[str, dict[str, float]]:
    """`{"rlhf.exactMatch": 1}` -> `{"rlhf": {"exactMatch": 1}}` (eval.json, the summary table)."""
    table: dict[str, dict[str, float]] = {m: {} for m in models}
    for key, value in metrics.items():
        model, _, score = key.partition(".")
        table.setdefault(model, {})[score] = value
    return table


def _fmt(row: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in row.items())
