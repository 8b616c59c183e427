"""rlhf: reinforcement learning from a reward model with TRL's `RLOOTrainer` (or `GRPOTrainer`, or
our PPO loop with a value model: `refinery_trainer.ppo`).

    refinery-train run --config stage.yaml      # stage.type: rlhf, rl.algorithm: rloo | grpo | ppo

`rl.generation: vllm` samples with vLLM in the training process (TRL's colocate mode; GPU only,
see `refinery_trainer.kernels`). policy + tokenizer (the `from` stage's `model/`, usually sft) and the reward model (the
`rewardModel` stage's `model/`) → prompts → greedy completions of the held-out prompts scored by
the reward model (the baseline) → RLOOTrainer/GRPOTrainer: `rl.numGenerations` completions per
prompt sampled at `rl.temperature`, up to `rl.maxCompletionLength` tokens, scored by the reward
model, KL penalty `rl.beta` against the initial policy → the same held-out scoring → `model/`.

Each optimiser step samples `training.batchSize` completions (batchSize / numGenerations
prompts), so batchSize x gradientAccumulationSteps must be a multiple of `rl.numGenerations`.

Metrics:
- `meanReward`: mean reward-model score of the trained policy's greedy completions of the first
  `rl.evalPrompts` held-out prompts; `baselineMeanReward`: the same for the initial policy (same
  prompts, same decoding), so the two compare like for like.
- `kl`: KL divergence to the initial policy as TRL logs it (mean per completion token of
  log pi/pi_ref over the sampled training completions) in the last logging window; only when
  `rl.beta` > 0, since TRL keeps no reference model otherwise.
- `trainReward`: mean reward of the sampled training completions in the last logging window.
- `trainLoss`: mean policy loss (near 0 by construction: advantages are centred per prompt).
- ppo (`refinery_trainer.ppo`, our own loop with a critic initialised from the reward model):
  `kl` (the same per-token mean), `trainReward`, `trainLoss` (policy + valueCoef x value loss),
  `policyLoss`, `valueLoss` and `beta` (the KL weight, adapted when `rl.targetKl` is set), all
  from the last logging window.
This module is the only place RLOOConfig and GRPOConfig appear.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from refinery_operator.api.v1alpha1 import RlSpec

from ..context import StageContext
from ..errors import StageError

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> dict[str, float]:
    spec, rl = ctx.data, ctx.stage.rl or RlSpec()
    _check_batch(ctx, rl)
    generation = _generation_kwargs(rl)  # refuses vllm where it cannot run, before any model loads
    train_rows, eval_rows = ctx.load_data(spec.prompt_field, hint="data.promptField")
    for table in (train_rows, eval_rows):
        table.require_text(spec.prompt_field)
    eval_prompts = [row[spec.prompt_field] for row in eval_rows.rows[: rl.eval_prompts]]

    policy, tokenizer = ctx.load_causal_lm()
    tokenizer.padding_side = "left"  # generation continues the prompt: RL trainers require left padding
    reward_model, reward_tokenizer = load_reward_model(ctx)

    baseline = mean_reward(policy, tokenizer, reward_model, reward_tokenizer, eval_prompts, rl)
    log.info("rlhf: initial policy scores %.4f on %d held-out prompts", baseline, len(eval_prompts))
    ctx.report(metrics={**ctx.reporter.record.metrics, "baselineMeanReward": baseline})

    if rl.algorithm == "ppo":  # our own loop: TRL 1.16 has no PPO
        from .. import ppo

        prompts = [row[spec.prompt_field] for row in train_rows.rows]
        history = ppo.train(ctx, rl, policy, tokenizer, reward_model, reward_tokenizer, prompts)
        model, metrics = policy, last_logged(history, PPO_METRICS)
    else:
        from ..evaluation.hacking import EmptyCompletionWatch, HackingWatch

        watch = HackingWatch(ctx, rl, EmptyCompletionWatch(), rl.max_completion_length)
        trainer = _trainer(ctx, rl, policy, tokenizer, reward_model, reward_tokenizer, train_rows, eval_rows, generation, watch)
        output = ctx.train(trainer)
        watch.raise_if_stopped(ctx.stage.name)  # rl.stopOnHacking
        model, metrics = trainer.model, last_logged(_log_history(ctx, trainer), TRL_METRICS)
        if output.training_loss is not None and math.isfinite(output.training_loss):
            metrics["trainLoss"] = float(output.training_loss)
    final, stats = held_out_scores(model, tokenizer, reward_model, reward_tokenizer, eval_prompts, rl)
    metrics.update(baselineMeanReward=baseline, meanReward=final, **{HELD_OUT_STATS[k]: v for k, v in stats.items()})
    live = ctx.reporter.record.metrics  # the training logs' latest figures and flags (HackingWatch)
    if "emptyFraction" in live:
        metrics["emptyFraction"] = live["emptyFraction"]
    metrics.update(held_out_verdict(baseline, final, stats, metrics, live, rl))
    log.info("rlhf: mean held-out reward %.4f -> %.4f", baseline, metrics["meanReward"])
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


def held_out_scores(policy, tokenizer, reward_model, reward_tokenizer, prompts: list[str], rl: RlSpec):
    """(mean reward, completion statistics) of the policy's greedy completions of the held-out prompts."""
    from ..evaluation.completions import completion_stats
    from ..scoring import generate_counted, score

    texts, counts = generate_counted(policy, tokenizer, prompts, rl.max_completion_length)
    rewards = score(reward_model, reward_tokenizer, prompts, texts)
    return sum(rewards) / len(rewards), completion_stats(counts, rl.max_completion_length, texts)


def held_out_verdict(baseline: float, final: float, stats: dict, metrics: dict, live: dict, rl: RlSpec) -> dict[str, float]:
    """The reward-hacking flags (1.0 / 0.0): seen in the training logs (`live`), or on the held-out
    greedy completions, whose reward rose over the initial policy's while they collapsed."""
    from ..evaluation.hacking import hacking_verdict

    verdict = hacking_verdict(first_reward=baseline, reward=final, empty=stats.get("emptyFraction"),
                              truncated=stats.get("truncatedFraction"), kl=metrics.get("kl"), max_kl=rl.max_kl)
    names = ["completionsCollapsed", *(["klExceeded"] if rl.max_kl is not None else [])]
    return {name: float(bool(verdict.get(name) or live.get(name))) for name in names}


def _trainer(ctx, rl: RlSpec, policy, tokenizer, reward_model, reward_tokenizer, train_rows, eval_rows, generation: dict, watch):
    from datasets import Dataset

    if rl.algorithm == "grpo":
        from trl import GRPOConfig as Config, GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Config, RLOOTrainer as Trainer

    columns = {"prompt": ctx.data.prompt_field}
    periodic_eval = ctx.training.eval_steps is not None  # TRL's own eval: sampled rewards on held-out prompts
    config = Config(
        # Held-out eval batches must hold whole groups of numGenerations completions.
        **ctx.training_args_kwargs(per_device_eval_batch_size=_round_up(ctx.training.batch_size, rl.num_generations)),
        num_generations=rl.num_generations,
        max_completion_length=rl.max_completion_length,
        temperature=rl.temperature,
        beta=rl.beta,
        disable_dropout=True,
        **generation,  # rl.generation: vllm (colocate) or transformers' generate
        reward_weights=[1.0, 0.0],
    )
    return Trainer(
        model=policy,
        # The watch has weight 0: it only counts empty completions (evaluation/hacking.py).
        reward_funcs=[reward_model, watch.empty_watch],
        args=config,
        train_dataset=Dataset.from_list(train_rows.select(columns)),
        eval_dataset=Dataset.from_list(eval_rows.select(columns)) if periodic_eval else None,
        processing_class=tokenizer,
        reward_processing_classes=[reward_tokenizer, None],
        callbacks=[*ctx.callbacks(), watch],
        # LoRA: only the adapters train; the KL reference is the same model with them switched off.
        peft_config=ctx.lora_config("causal"),  # None unless training.lora
    )


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


def mean_reward(policy, tokenizer, reward_model, reward_tokenizer, prompts: list[str], rl: RlSpec) -> float:
    """Mean reward-model score of the policy's greedy completions of `prompts`."""
    from ..scoring import generate, score

    completions = generate(policy, tokenizer, prompts, rl.max_completion_length)
    rewards = score(reward_model, reward_tokenizer, prompts, completions)
    return sum(rewards) / len(rewards)


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
