"""eval: score the final models of other stages; never trains.

    refinery-train run --config stage.yaml      # stage.type: eval

For each model in `eval.models` (the planner resolved their paths into `run.models`):
- `eval.generate`: answer every held-out prompt (greedy, or sampled at `temperature`; `samples`
  times each), then `exactMatch` and `contains` against the reference answers, `meanReward`
  under the reward model `eval.generate.rewardModel`, `winRate` against the baseline model's
  answers judged by that reward model, each of `eval.generate.rewards` under its name,
  `passAtK` / `meanAtK` (with `samples`; api/evaluation.py defines them), and the completion
  statistics (`meanCompletionLength`, `emptyFraction`, `truncatedFraction`) that show a
  collapsed policy;
- `eval.harness`: lm-evaluation-harness tasks (`evaluation/harness.py`), `<task>/<metric>`.

Metrics are flat, `<model>.<score>` (`rlhf.exactMatch`), so a gate reads them like any other.
Every answer goes to `<stage_dir>/answers.jsonl` (model, prompt, reference, answer, reward) so a
score can be checked by eye; the table of scores to `<stage_dir>/eval.json`, with `_footnotes`
naming the scores a circular judge produced (the reward model the scored model was optimised
against: the pipeline's CircularJudge warning).
"""

from __future__ import annotations

import json
import logging
import random

from refinery.api.evaluation import EvalSpec, GenerateEval

from ..checkpoints import atomic_write_text
from ..context import StageContext
from ..data import Table
from ..errors import ModelError
from ..evaluation.completions import completion_stats
from ..evaluation.generative import by_prompt, contains, exact_match, mean, pass_at_k, win_rate
from ..rewards import build_rewards
from ..rewards.sources import REFERENCE

log = logging.getLogger(__name__)
ANSWERS_FILE = "answers.jsonl"
EVAL_FILE = "eval.json"
FOOTNOTES = "_footnotes"  # eval.json's key beside the models' (no stage name starts with `_`)
MARK = "*"


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
    table = by_model(metrics, spec.models)
    if ctx.run.circular:  # scores judged by the reward model their model was optimised against (CircularJudge)
        table[FOOTNOTES] = {metric: f"{MARK} {why}" for metric, why in ctx.run.circular.items() if metric in metrics}
    atomic_write_text(ctx.stage_dir / EVAL_FILE, json.dumps(table, indent=2, sort_keys=True) + "\n")
    ctx.output = str(ctx.stage_dir / EVAL_FILE)  # an eval stage has no model of its own
    return metrics


def model_paths(ctx: StageContext, spec: EvalSpec) -> dict:
    given = ctx.run.models or {}
    missing = [name for name in spec.referenced_stages if name not in given]
    if missing:
        raise ModelError(f"stage {ctx.stage.name!r}: the run names no model for {', '.join(missing)}")
    return {name: ctx.model_path(given[name], f"the model of stage {name!r}") for name in spec.referenced_stages}


def load_prompts(ctx: StageContext, gen: GenerateEval) -> Table:
    """The prompts answered: checked whole as an Arrow table (arrow_data), then the first `limit` as rows
    (each is generated on its own; only these become Python objects)."""
    from ..arrow_data import load_table

    table = load_table(ctx.data_file(gen.path), cache_dir=ctx.datasets_cache)
    table.require(gen.prompt_field, gen.reference_field, hint="eval.generate.promptField / referenceField")
    table.require_text(gen.prompt_field, gen.reference_field)
    return Table(table.path, table.head(len(table) if gen.limit is None else gen.limit), unit="row")


def generative_scores(ctx: StageContext, spec: EvalSpec, paths: dict, answers: list[dict]) -> dict[str, float]:
    """`<model>.<score>` for every evaluated model (and the baseline's answers, to judge the win rate).

    With `samples: k` each prompt is answered k times (prompt-major), every per-answer score is a
    mean over all k answers, and `passAtK` / `meanAtK` say how many of each prompt's k are right.
    """
    import torch

    from ..scoring import generate_counted, score
    from .rlhf import load_reward_model_from

    gen = spec.generate
    k = gen.samples or 1
    table = load_prompts(ctx, gen)
    prompts = [r[gen.prompt_field] for r in table.rows for _ in range(k)]
    columns = answer_columns(table.rows, gen, k)
    references = columns[REFERENCE]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    judge = None
    if gen.reward_model:
        reward_model, reward_tokenizer = load_reward_model_from(ctx, paths[gen.reward_model])
        judge = (reward_model.to(device), reward_tokenizer)
    verifiers = build_rewards(ctx, gen.rewards or [])
    for reward in verifiers:
        if reward.model is not None:
            reward.model.to(device)
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
        exact = [exact_match(a, r) for a, r in zip(texts, references)]
        row = {"exactMatch": mean(exact), "contains": mean([contains(a, r) for a, r in zip(texts, references)]),
               **completion_stats(counts, gen.max_new_tokens, texts)}
        if judge is not None:
            rewards[name] = score(*judge, prompts, texts)
            row["meanReward"] = mean(rewards[name])
        scored = {r.name: r.score(prompts, texts, columns) for r in verifiers}
        row.update({reward: mean(values) for reward, values in scored.items()})
        if gen.samples is not None:
            correct = scored[gen.correctness.label] if gen.correctness is not None else exact
            row.update(sampled_scores(correct, k))
        for j, (p, ref, a) in enumerate(zip(prompts, references, texts)):
            answers.append({"model": name, "prompt": p, "reference": ref, "answer": a,
                            **({"sample": j % k} if k > 1 else {}),
                            **({"reward": rewards[name][j]} if name in rewards else {}),
                            **({"rewards": {r: v[j] for r, v in scored.items()}} if scored else {})})
        if name in spec.models:
            metrics.update({f"{name}.{k_}": float(v) for k_, v in row.items()})
        log.info("eval: %s on %d held-out prompts x %d: %s", name, len(table.rows), k, _fmt(row))
        ctx.report(progress=min(0.99, (i + 1) / (len(names) + (1 if spec.harness else 0))), metrics=dict(metrics))
    if gen.baseline:
        for name in spec.models:
            metrics[f"{name}.winRate"] = win_rate(rewards[name], rewards[gen.baseline])
    return metrics


def answer_columns(rows: list[dict], gen: GenerateEval, k: int) -> dict[str, list]:
    """Every column of the prompts but the prompt, each row repeated k times, the reference under
    `reference` (what verifiers and a user's function read, as in the rlhf stage)."""
    names = [c for c in dict.fromkeys(c for r in rows for c in r) if c not in (gen.prompt_field, gen.reference_field)]
    columns = {c: [r.get(c) for r in rows for _ in range(k)] for c in names}
    columns[REFERENCE] = [r[gen.reference_field] for r in rows for _ in range(k)]
    return columns


def sampled_scores(correct: list[float], k: int) -> dict[str, float]:
    """passAtK: share of prompts with a correct answer among their k (Chen et al. 2021, n = k);
    meanAtK: share of correct answers over all k. Correct: the verifier gave 1.0 or more."""
    per_prompt = [sum(v >= 1.0 for v in answers) for answers in by_prompt(correct, k)]
    return {"passAtK": mean([pass_at_k(k, c, k) for c in per_prompt]), "meanAtK": mean([c / k for c in per_prompt])}


def by_model(metrics: dict[str, float], models: list[str]) -> dict[str, dict[str, float]]:
    """`{"rlhf.exactMatch": 1}` -> `{"rlhf": {"exactMatch": 1}}` (eval.json, the summary table)."""
    table: dict[str, dict[str, float]] = {m: {} for m in models}
    for key, value in metrics.items():
        model, _, score = key.partition(".")
        table.setdefault(model, {})[score] = value
    return table


def _fmt(row: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in row.items())
