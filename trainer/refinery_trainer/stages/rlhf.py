"""rlhf: reinforcement learning against `rl.rewards` with TRL's `RLOOTrainer` (or `GRPOTrainer`, or
our PPO loop with a value model: `refinery_trainer.ppo`).

    refinery-train run --config stage.yaml      # stage.type: rlhf, rl.algorithm: rloo | grpo | ppo

`rl.generation: vllm` samples with vLLM in the training process (TRL's colocate mode; GPU only,
see `refinery_trainer.kernels`). policy + tokenizer (the `from` stage's `model/`, usually sft) and
the rewards (`rl.rewards`, or `rewardModel`: reward stages' models, verifiers against the prompts'
`reference` column, a user's function — `refinery_trainer.rewards`) → the held-out watch scores the
initial policy's greedy answers (the baseline; `evaluation/audit.py`) → RLOOTrainer/GRPOTrainer:
`rl.numGenerations` completions per prompt sampled at `rl.temperature`, up to
`rl.maxCompletionLength` tokens, scored by the weighted rewards, KL penalty `rl.beta` against the
initial policy; the watch again every `rl.auditSteps` → the same held-out scoring → `model/`
(the audit's best step's with `rl.selectBy: audit`).

Each optimiser step samples `training.batchSize` completions (batchSize / numGenerations
prompts), so batchSize x gradientAccumulationSteps must be a multiple of `rl.numGenerations`.

Metrics:
- `meanReward`: mean weighted reward of the trained policy's greedy completions of the first
  `rl.evalPrompts` held-out prompts; `baselineMeanReward`: the same for the initial policy (same
  prompts, same decoding), so the two compare like for like. `heldOutRewards/<name>` each reward
  on its own; `auditScore`, `heldOutExactMatch`, `heldOutDistinct` and their `baseline*` (the
  watch); the verdicts (`rewardOveroptimized`, `groundTruthFell`, `completionsDegenerate`,
  `completionsCollapsed`, `klExceeded`: 1.0 when true) for the checks that could run.
- `kl`: KL divergence to the initial policy as TRL logs it (mean per completion token of
  log pi/pi_ref over the sampled training completions) in the last logging window; only when
  `rl.beta` > 0, since TRL keeps no reference model otherwise.
- `trainReward`: mean reward of the sampled training completions in the last logging window;
  `rewards/<name>` each reward's.
- `trainLoss`: mean policy loss (near 0 by construction: advantages are centred per prompt).
- ppo (`refinery_trainer.ppo`, our own loop with a critic initialised from the first reward model,
  or the policy): `kl` (the same per-token mean), `trainReward`, `trainLoss` (policy + valueCoef x
  value loss), `policyLoss`, `valueLoss` and `beta` (the KL weight, adapted when `rl.targetKl` is
  set), all from the last logging window.
This module is the only place RLOOConfig and GRPOConfig appear.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from refinery.api.rewards import WATCH_NAME
from refinery.api.v1alpha1 import RlSpec

from ..context import StageContext
from ..errors import DataError, StageError
from ..evaluation.audit import HeldOut, HeldOutWatch, restore_best
from ..evaluation.hacking import CompletionWatch, HackingWatch
from ..rewards import Reward, build_rewards
from ..rewards.sources import REFERENCE

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> dict[str, float]:
    spec, rl = ctx.data, ctx.stage.rl or RlSpec()
    _check_batch(ctx, rl)
    generation = _generation_kwargs(rl)  # refuses vllm where it cannot run, before any model loads
    train_rows, eval_rows = ctx.load_data(spec.prompt_field, hint="data.promptField")
    for table in (train_rows, eval_rows):
        table.require_text(spec.prompt_field)
    rewards = build_rewards(ctx, ctx.stage.rewards)
    audit = build_rewards(ctx, rl.audit or [])
    _check_references(ctx, rewards, audit, train_rows, eval_rows)
    held_out = _held_out(ctx, eval_rows, rl)

    policy, tokenizer = ctx.load_causal_lm()
    tokenizer.padding_side = "left"  # generation continues the prompt: RL trainers require left padding
    watch = HeldOutWatch(ctx, rl, rewards, audit, held_out, tokenizer)
    first = watch.evaluate(policy, step=0)
    log.info("rlhf: initial policy scores %.4f on %d held-out prompts", first.reward, len(held_out.prompts))
    ctx.report(metrics={**ctx.reporter.record.metrics, **watch.metrics()})

    completions = CompletionWatch(group=rl.num_generations)
    hacking = HackingWatch(ctx, rl, completions, held_out=watch)
    if rl.algorithm == "ppo":  # our own loop: TRL 1.16 has no PPO
        from .. import ppo

        rows = _rows(train_rows, spec).to_list()  # our PPO loop samples Python rows
        history = ppo.train(ctx, rl, policy, tokenizer, rewards, rows, callbacks=[watch, hacking],
                            completion_watch=completions)
        model = policy
    else:
        trainer = _trainer(ctx, rl, policy, tokenizer, rewards, train_rows, eval_rows, generation, [watch, hacking], completions)
        output = ctx.train(trainer)
        model, history = trainer.model, _log_history(ctx, trainer)
    metrics = last_logged(history, PPO_METRICS if rl.algorithm == "ppo" else TRL_METRICS)
    if rl.algorithm != "ppo" and output.training_loss is not None and math.isfinite(output.training_loss):
        metrics["trainLoss"] = float(output.training_loss)
    hacking.raise_if_stopped(ctx.stage.name)  # rl.stopOnHacking, during training
    last = watch.evaluate(model, step=ctx.steps or 0)
    metrics.update(watch.metrics())
    metrics.update({HELD_OUT_STATS[k]: v for k, v in (("meanCompletionLength", last.mean_length),
                   ("emptyFraction", last.empty_fraction), ("truncatedFraction", last.truncated_fraction))})
    # Each reward on its own: its mean over the last logging window (as live), and on the held-out answers.
    metrics.update(last_logged(history, {f"rewards/{r.name}/mean": f"rewards/{r.name}" for r in rewards}))
    metrics.update({f"heldOutRewards/{name}": v for name, v in last.reward_means.items()})
    live = ctx.reporter.record.metrics  # the training logs' latest figures and flags (HackingWatch)
    for key in ("emptyFraction", "distinctFraction", "groupDistinctFraction"):
        if key in live:
            metrics[key] = live[key]
    metrics.update(held_out_verdict(first.reward, last, metrics, live, rl, watch))
    log.info("rlhf: mean held-out reward %.4f -> %.4f", first.reward, last.reward)
    _stop_if_hacking(ctx, rl, metrics, watch)
    if rl.selects_by_audit and watch.best is not None:
        metrics["selectedStep"] = float(watch.best["step"])
    if rl.selects_by_audit and watch.best is not None and watch.best["step"] != last.step:
        restore_best(model, ctx.stage_dir)
        log.info("rlhf: saving the model of step %d, the best audit score (%.4g; rl.selectBy audit)",
                 watch.best["step"], watch.best["audit"])
    ctx.save_final(model, tokenizer)
    return metrics


# TRL log keys → metric names (the last logging window): reward, KL and what the completions look like.
TRL_METRICS = {"kl": "kl", "reward": "trainReward", "completions/mean_length": "meanCompletionLength",
               "completions/clipped_ratio": "truncatedFraction"}

# The held-out greedy completions' statistics (evaluation/completions.py) → metric names.
HELD_OUT_STATS = {"meanCompletionLength": "heldOutMeanLength", "emptyFraction": "heldOutEmptyFraction",
                  "truncatedFraction": "heldOutTruncatedFraction"}

# ppo log keys → metric names (the loop's last logging window).
PPO_METRICS = {"kl": "kl", "reward": "trainReward", "loss": "trainLoss", "policy_loss": "policyLoss",
               "value_loss": "valueLoss", "beta": "beta"}


def _generation_kwargs(rl: RlSpec) -> dict:
    import torch

    from ..kernels import generation_kwargs

    return generation_kwargs(rl.generation, cuda=torch.cuda.is_available())


def held_out_verdict(first_reward: float, last, metrics: dict, live: dict, rl: RlSpec, watch) -> dict[str, float]:
    """The reward-hacking flags (1.0 / 0.0): seen in the training logs (`live`), or on the held-out
    greedy completions, whose reward rose over the initial policy's while they collapsed, fell on
    the audit or the references, or became alike. Only the checks that could run are reported."""
    from ..evaluation.hacking import hacking_verdict

    verdict = hacking_verdict(first_reward=first_reward, reward=last.reward, empty=last.empty_fraction,
                              truncated=last.truncated_fraction, kl=metrics.get("kl"), max_kl=rl.max_kl)
    verdict.update(watch.verdict())
    names = ["completionsCollapsed", "completionsDegenerate", *(["klExceeded"] if rl.max_kl is not None else []),
             *(["rewardOveroptimized"] if rl.audit else []), *(["groundTruthFell"] if watch.has_references else [])]
    return {name: float(bool(verdict.get(name) or live.get(name))) for name in names}


def _stop_if_hacking(ctx, rl: RlSpec, metrics: dict, watch) -> None:
    """rl.stopOnHacking: a verdict after training fails the stage too, and no model is saved."""
    from ..evaluation.hacking import REASON_REWARD_HACKING, describe

    flagged = {k: v for k, v in metrics.items() if k in HACKING_FLAGS and v >= 1.0}
    if not (rl.stop_on_hacking and flagged):
        return
    best = (f"; the best audit score ({watch.best['audit']:.4g}) was at step {watch.best['step']}, saved in "
            f"{ctx.stage_dir}/audit-best" if watch.best is not None else "")
    raise StageError(f"stage {ctx.stage.name!r} stopped after training (rl.stopOnHacking), no model saved: "
                     f"{describe(flagged, metrics, rl.max_kl)}{best}", REASON_REWARD_HACKING)


HACKING_FLAGS = ("completionsCollapsed", "completionsDegenerate", "klExceeded", "rewardOveroptimized", "groundTruthFell")


def _held_out(ctx, eval_rows, rl: RlSpec) -> HeldOut:
    dataset = _rows(eval_rows, ctx.data)
    rows = dataset.select(range(min(rl.eval_prompts, len(dataset)))).to_list()
    columns = {k: [r.get(k) for r in rows] for k in rows[0] if k != "prompt"} if rows else {}
    return HeldOut([r["prompt"] for r in rows], columns)


def _rows(table, spec):
    """The prompts as a datasets.Dataset in TRL's names: `prompt`, `reference` (data.referenceField), the
    other columns as they are (those the file's own `prompt`/`reference` would clash with left out)."""
    columns = {c: c for c in table.column_names if c not in (spec.prompt_field, spec.reference_field, "prompt", REFERENCE)}
    columns["prompt"] = spec.prompt_field
    if table.has_column(spec.reference_field):
        columns[REFERENCE] = spec.reference_field
    return table.select(columns)


def _check_references(ctx, rewards: list[Reward], audit: list[Reward], train_rows, eval_rows) -> None:
    """Verifiers need the reference column: the optimised ones in the training prompts (and held out,
    where every reward is scored), the audit's only in the held-out prompts it scores."""
    field = ctx.data.reference_field
    for table, what, sources in ((train_rows, "training prompts", rewards), (eval_rows, "held-out prompts", [*rewards, *audit])):
        needs = [r.name for r in sources if r.needs_reference]
        if needs and not table.has_column(field):
            raise DataError(f"stage {ctx.stage.name!r}: rewards {', '.join(needs)} check answers against a reference, but "
                            f"the {what} ({table.path}) have no {field!r} column: add it, or set data.referenceField")


def _trainer(ctx, rl: RlSpec, policy, tokenizer, rewards: list[Reward], train_rows, eval_rows, generation: dict,
             callbacks: list, completions: CompletionWatch):
    if rl.algorithm == "grpo":
        from trl import GRPOConfig as Config, GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Config, RLOOTrainer as Trainer

    periodic_eval = ctx.training.eval_steps is not None  # TRL's own eval: sampled rewards on held-out prompts
    funcs = [r.trl_func() for r in rewards]
    grpo = {"loss_type": rl.loss_type} if rl.loss_type else {}
    config = Config(
        # Held-out eval batches must hold whole groups of numGenerations completions.
        **ctx.training_args_kwargs(per_device_eval_batch_size=_round_up(ctx.training.batch_size, rl.num_generations)),
        num_generations=rl.num_generations,
        max_completion_length=rl.max_completion_length,
        temperature=rl.temperature,
        beta=rl.beta,
        disable_dropout=True,
        mask_truncated_completions=rl.mask_truncated_completions,
        **generation,  # rl.generation: vllm (colocate) or transformers' generate
        **grpo,
        reward_weights=[r.weight for r in rewards] + [0.0],
    )
    trainer = Trainer(
        model=policy,
        # The completion watch has weight 0: it only records what the completions look like (evaluation/hacking.py).
        reward_funcs=[f for f, _ in funcs] + [completions],
        args=config,
        train_dataset=_rows(train_rows, ctx.data),
        eval_dataset=_rows(eval_rows, ctx.data) if periodic_eval else None,
        processing_class=tokenizer,
        reward_processing_classes=[p for _, p in funcs] + [None],
        callbacks=[*ctx.callbacks(), *callbacks],
        # LoRA: only the adapters train; the KL reference is the same model with them switched off.
        peft_config=ctx.lora_config("causal"),  # None unless training.lora
    )
    trainer.reward_func_names = [r.name for r in rewards] + [WATCH_NAME]  # rewards/<name>/mean
    return trainer


def load_reward_model(ctx: StageContext):
    """(model, tokenizer) of the reward stage's `model/`: a one-output sequence classifier, frozen."""
    return load_reward_model_from(ctx, ctx.reward_model_dir)


def load_reward_model_from(ctx: StageContext, path):
    """(model, tokenizer) of a reward model folder, frozen (rlhf, and eval's judge)."""
    from transformers import AutoModelForSequenceClassification

    from ..modeling import load_model

    model = load_model(path, AutoModelForSequenceClassification, num_labels=1, **ctx.model_kwargs())
    tokenizer = ctx.load_tokenizer(path)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.requires_grad_(False)
    return model.eval(), tokenizer


def last_logged(history: list[dict], names: dict[str, str]) -> dict[str, float]:
    """The newest value of each TRL log key in `names`, renamed (`{"kl": "kl"}`)."""
    found: dict[str, float] = {}
    for entry in reversed(history):
        for key, name in names.items():
            if name not in found and isinstance(entry.get(key), (int, float)):
                found[name] = float(entry[key])
    return found


def _log_history(ctx: StageContext, trainer) -> list[dict]:
    """The trainer's logs; after a rerun that only loaded a finished checkpoint, the checkpoint's."""
    if trainer.state.log_history or ctx.resumed_from is None:
        return trainer.state.log_history
    state = Path(ctx.resumed_from.path) / "trainer_state.json"
    return json.loads(state.read_text()).get("log_history", []) if state.is_file() else []


def _check_batch(ctx: StageContext, rl: RlSpec) -> None:
    t = ctx.training
    completions = t.batch_size * t.gradient_accumulation_steps
    if completions % rl.num_generations:
        raise StageError(
            f"stage {ctx.stage.name!r}: training.batchSize x gradientAccumulationSteps = {completions} completions "
            f"per step must be a multiple of rl.numGenerations = {rl.num_generations} (whole groups per prompt)"
        )


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
