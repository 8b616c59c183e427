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
        trainer = _trainer(ctx, rl, policy, tokenizer, reward_model, reward_tokenizer, train_rows, eval_rows, generation)
        output = ctx.train(trainer)
        model, metrics = trainer.model, last_logged(_log_history(ctx, trainer), {"kl": "kl", "reward": "trainReward"})
        if output.training_loss is not None and math.isfinite(output.training_loss):
            metrics["trainLoss"] = float(output.training_loss)
    metrics.update(baselineMeanReward=baseline,
                   meanReward=mean_reward(model, tokenizer, reward_model, reward_tokenizer, eval_prompts, rl))
    log.info("rlhf: mean held-out reward %.4f -> %.4f", baseline, metrics["meanReward"])
    ctx.save_final(model, tokenizer)
    return metrics


# ppo log keys → metric names (the loop's last logging window).
PPO_METRICS = {"kl": "kl", "reward": "trainReward", "loss": "trainLoss", "policy_loss": "policyLoss",
               "value_loss": "valueLoss", "beta": "beta"}


def _generation_kwargs(rl: RlSpec) -> dict:
    import torch

    from ..kernels import generation_kwargs

    return generation_kwargs(rl.generation, cuda=torch.cuda.is_available())


def _trainer(ctx, rl: RlSpec, policy, tokenizer, reward_model, reward_tokenizer, train_rows, eval_rows, generation: dict):
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
    )
    return Trainer(
        model=policy,
        reward_funcs=reward_model,
        args=config,
        train_dataset=Dataset.from_list(train_rows.select(columns)),
        eval_dataset=Dataset.from_list(eval_rows.select(columns)) if periodic_eval else None,
        processing_class=tokenizer,
        reward_processing_classes=reward_tokenizer,
        callbacks=ctx.callbacks(),
        # LoRA: only the adapters train; the KL reference is the same model with them switched off.
        peft_config=ctx.lora_config("causal"),  # None unless training.lora
    )


def load_reward_model(ctx: StageContext):
    """(model, tokenizer) of the reward stage's `model/`: a one-output sequence classifier, frozen."""
    from transformers import AutoModelForSequenceClassification

    from ..modeling import load_model

    path = ctx.reward_model_dir
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
