"""PPO with a value model (critic), for `rlhf` stages with `rl.algorithm: ppo`.

    refinery-train run --config stage.yaml      # stage.type: rlhf, rl.algorithm: ppo

TRL 1.16 no longer ships PPO, so this is our own loop, written to be read (the recipe of
Ziegler et al. 2019 / InstructGPT as OpenRLHF and DeepSpeed-Chat implement it). Per step:

1. rollout: sample `training.batchSize x gradientAccumulationSteps` completions (`rl.numGenerations`
   per prompt) at `rl.temperature`, up to `rl.maxCompletionLength` tokens; score each with the
   reward model on prompt + completion at its last token (exactly as the rloo path scores);
2. per token: log-probs of the policy (old), of the frozen reference (the initial policy) and the
   critic's value of the state before the token; reward = -beta x (log pi_old - log pi_ref) on every
   token, plus the score on the last one; `beta` fixed, or adapted toward `rl.targetKl` per completion;
3. GAE (`rl.gamma`, `rl.gaeLambda`) → advantages (whitened over the batch) and returns;
4. `rl.ppoEpochs` passes over the rollout in `gradientAccumulationSteps` shuffled minibatches of
   `batchSize` (PPO has no gradient accumulation: each minibatch is one optimiser update) of
   clipped policy loss (`rl.clipRange`) + `rl.valueCoef` x clipped value loss (`rl.valueClipRange`).

The critic is the reward model's own network (AutoModelForSequenceClassification: a backbone and a
`score` head Linear(hidden, 1)) read at every token instead of only the last: `ValueModel` runs the
backbone and applies the head to each hidden state, so before training it predicts, at every
prefix, what the reward model would say of it — the initialisation OpenRLHF and DeepSpeed-Chat use.

Checkpoints (`checkpoint-<step>` under ctx.checkpoints_dir, marked complete by the shared
`CheckpointMarkerCallback` through `StageContext.mark_checkpoint`): the policy at the top level
(so `is_checkpoint_loadable` and a rerun that only loads the final checkpoint see a model), the
critic in `value/`, optimiser/scheduler/beta/RNG in `ppo_state.pt`, `trainer_state.json`. Progress,
NaN checks, SIGTERM and Prometheus go through the same TrainerCallbacks as every other stage.
One process only: no DeepSpeed, no LoRA (yet). The API refuses such a stage at admission
(`PPO_ONE_PROCESS_MESSAGE`); the check below covers a torchrun started by hand.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from refinery.api.v1alpha1 import RlSpec

log = logging.getLogger(__name__)

MAX_GRAD_NORM = 1.0  # as the Trainer's default, for the rloo path and this one alike
KL_HORIZON = 10_000  # completions over which the adaptive controller may move beta by e^±0.2 (Ziegler et al.)


# ---- the pure pieces ---------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the unmasked entries; masked entries become 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation over [batch, tokens]; `mask` is 1 on completion tokens
    (a prefix of each row: the episode ends at its last 1). Returns (advantages, returns)."""
    tokens = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(tokens)):
        alive = mask[:, t + 1] if t + 1 < tokens else torch.zeros_like(running)  # 0 after the last token
        next_value = values[:, t + 1] * alive if t + 1 < tokens else 0.0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * alive * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def clipped_policy_loss(logprobs, old_logprobs, advantages, mask, clip_range: float):
    """PPO's clipped surrogate (to minimise). Returns (loss, share of tokens whose ratio was clipped)."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, masked_mean((clipped > unclipped).float(), mask)


def clipped_value_loss(values, old_values, returns, mask, clip_range: float) -> torch.Tensor:
    """0.5 x max((V - R)^2, (V_clipped - R)^2), V_clipped kept within clip_range of the rollout's V."""
    clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def kl_penalised_rewards(scores, logprobs, ref_logprobs, mask, beta: float):
    """Per-token rewards: -beta x (log pi - log pi_ref) on every token, plus the score on the last.
    Returns (rewards, per-token KL estimate)."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -beta * kl
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores)), last] += scores * (mask.sum(dim=1) > 0)
    return rewards, kl


class KLController:
    """beta of the KL penalty: fixed, or adapted toward `target` KL per completion (Ziegler et al.
    2019: beta *= 1 + clip(KL / target - 1, ±0.2) x completions / horizon)."""

    def __init__(self, beta: float, target: float | None = None, horizon: int = KL_HORIZON):
        self.beta, self.target, self.horizon = beta, target, horizon

    def update(self, kl_per_completion: float, completions: int) -> float:
        if self.target is not None:
            error = min(max(kl_per_completion / self.target - 1, -0.2), 0.2)
            self.beta *= 1 + error * completions / self.horizon
        return self.beta


class ValueModel(nn.Module):
    """A per-token critic from a sequence classifier: the backbone's hidden state at every position
    through the classifier's one-output `score` head (the reward model's, at initialisation)."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        backbone = getattr(self.classifier, self.classifier.base_model_prefix)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
        return self.classifier.score(hidden).squeeze(-1)


# ---- rollouts ----------------------------------------------------------------------------------


@dataclass
class Rollout:
    """One batch of sampled completions; token tensors are [batch, completion tokens]."""

    input_ids: torch.Tensor  # prompt (left-padded) + completion (padded after its end)
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    mask: torch.Tensor  # 1.0 on completion tokens (up to and including EOS)
    logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    scores: torch.Tensor  # weighted reward per completion (rl.rewards)
    kl: torch.Tensor  # per-token KL estimate

    def select(self, index: torch.Tensor) -> Rollout:
        return Rollout(**{name: value[index] for name, value in vars(self).items()})


def completion_mask(completion_ids: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """1.0 on every token up to and including the first EOS of each row, 0.0 after it."""
    if eos_token_id is None:
        return torch.ones_like(completion_ids, dtype=torch.float)
    is_eos = (completion_ids == eos_token_id).long()
    return ((is_eos.cumsum(dim=1) - is_eos) == 0).float()


def token_logprobs(model, input_ids, attention_mask, position_ids, prompt_len: int, temperature: float):
    """log pi(token | prefix) of each completion token, at the sampling temperature."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    logits = logits[:, prompt_len - 1 : -1].float() / temperature
    return torch.gather(F.log_softmax(logits, dim=-1), 2, input_ids[:, prompt_len:, None]).squeeze(-1)


def critic_values(critic: ValueModel, input_ids, attention_mask, position_ids, prompt_len: int) -> torch.Tensor:
    """V(state before each completion token)."""
    return critic(input_ids, attention_mask, position_ids)[:, prompt_len - 1 : -1].float()


@torch.no_grad()
def rollout(policy, reference, critic, tokenizer, score_fn, rows: list[dict], rl: RlSpec,
            kl_ctl: KLController) -> Rollout:
    """Sample completions of the rows' prompts and everything the PPO update needs about them.
    `score_fn(prompts, completions, columns)` is the weighted reward of each completion."""
    prompts = [r["prompt"] for r in rows]
    columns = {k: [r.get(k) for r in rows] for k in rows[0] if k != "prompt"}
    policy.eval()
    critic.eval()
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    prompt_len = batch["input_ids"].shape[1]
    sequences = policy.generate(
        **batch, max_new_tokens=rl.max_completion_length, do_sample=True, temperature=rl.temperature, top_k=0,
        top_p=1.0, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    completions = sequences[:, prompt_len:]
    mask = completion_mask(completions, tokenizer.eos_token_id)
    attention_mask = torch.cat([batch["attention_mask"], mask.long()], dim=1)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    args = (sequences, attention_mask, position_ids, prompt_len)
    logprobs = token_logprobs(policy, *args, rl.temperature) * mask
    ref_logprobs = token_logprobs(reference, *args, rl.temperature) * mask
    values = critic_values(critic, *args) * mask

    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    scores = torch.tensor(score_fn(prompts, texts, columns), dtype=torch.float)
    rewards, kl = kl_penalised_rewards(scores, logprobs, ref_logprobs, mask, kl_ctl.beta)
    advantages, returns = gae(rewards, values, mask, rl.gamma, rl.gae_lambda)
    return Rollout(sequences, attention_mask, position_ids, mask, logprobs, values,
                   masked_whiten(advantages, mask), returns, scores, kl)


def ppo_update(policy, critic, optimizer, scheduler, data: Rollout, rl: RlSpec, minibatches: int,
               generator: torch.Generator) -> dict[str, float]:
    """`rl.ppoEpochs` passes of clipped policy + value updates over one rollout. Returns mean statistics."""
    policy.train()
    critic.train()
    prompt_len = data.input_ids.shape[1] - data.mask.shape[1]
    stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "loss": [], "clip_fraction": [], "grad_norm": []}
    # grad_norm: the policy's, before clipping
    for _ in range(rl.ppo_epochs):
        for index in torch.randperm(len(data.scores), generator=generator).chunk(minibatches):
            mb = data.select(index)
            args = (mb.input_ids, mb.attention_mask, mb.position_ids, prompt_len)
            logprobs = token_logprobs(policy, *args, rl.temperature)
            values = critic_values(critic, *args)
            policy_loss, clip_fraction = clipped_policy_loss(logprobs, mb.logprobs, mb.advantages, mb.mask, rl.clip_range)
            value_loss = clipped_value_loss(values, mb.values, mb.returns, mb.mask, rl.value_clip_range)
            loss = policy_loss + rl.value_coef * value_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # Clipped apart, as separate actor and critic optimisers would: the critic's early, large
            # value-loss gradients must not shrink the policy's step.
            grad_norm = torch.nn.utils.clip_grad_norm_(list(policy.parameters()), MAX_GRAD_NORM)
            torch.nn.utils.clip_grad_norm_(list(critic.parameters()), MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            for name, value in (("policy_loss", policy_loss), ("value_loss", value_loss), ("loss", loss),
                                ("clip_fraction", clip_fraction), ("grad_norm", grad_norm)):
                stats[name].append(float(value.detach()) if torch.is_tensor(value) else float(value))
    return {name: sum(v) / len(v) for name, v in stats.items()}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def linear_schedule(optimizer, warmup: int, total: int):
    """Linear warm-up, then linear decay to 0 at `total` updates (the Trainer's default schedule)."""

    def factor(update: int) -> float:
        if update < warmup:
            return (update + 1) / max(1, warmup)
        return max(0.0, (total - update) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def is_finite(stats: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in stats.values())


# ---- the loop ----------------------------------------------------------------------------------

STATE_FILE = "ppo_state.pt"  # optimiser, scheduler and beta; sampling is seeded per step, so no RNG state
VALUE_DIR = "value"


def train(ctx, rl: RlSpec, policy, tokenizer, rewards, prompts: list[dict], callbacks=(), completion_watch=None):
    """Train `policy` in place with PPO, checkpointing and resuming like every stage. `rewards` are the
    stage's reward sources (refinery_trainer.rewards), `prompts` its rows (`prompt`, `reference`, ...);
    `callbacks` get the Trainer's events and `completion_watch` (a CompletionWatch) sees every rollout.
    Returns the log history (TRL-style dicts: `kl`, `reward`, `rewards/<name>/mean`, `policy_loss`, `loss` …)."""
    import copy

    from .errors import StageError, TerminatedError
    from .rewards import score_all

    t = ctx.training
    if ctx.stage.deepspeed is not None or t.lora is not None or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise StageError(f"stage {ctx.stage.name!r}: rl.algorithm ppo runs in one process on full weights; "
                         "remove stage.deepspeed and training.lora and run it without torchrun, or use rloo/grpo")
    completions, minibatches = t.batch_size * t.gradient_accumulation_steps, t.gradient_accumulation_steps
    per_step = completions // rl.num_generations  # prompts per step
    max_steps = t.max_steps or max(1, math.ceil(t.epochs * len(prompts) / per_step))

    seed_everything(t.seed)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    critic = ValueModel(critic_network(ctx, rewards).requires_grad_(True))
    means: dict[str, float] = {}

    def score_fn(batch_prompts, texts, columns):
        if completion_watch is not None:
            completion_watch.observe(texts)
        totals, by_name = score_all(rewards, batch_prompts, texts, columns)
        means.clear()
        means.update(by_name)
        return totals

    # The Trainer's AdamW (no weight decay), so rloo and ppo differ by algorithm only.
    optimizer = torch.optim.AdamW([*policy.parameters(), *critic.parameters()], lr=t.learning_rate, weight_decay=0.0)
    updates = max_steps * rl.ppo_epochs * minibatches
    scheduler = linear_schedule(optimizer, int(t.warmup_ratio * updates), updates)
    kl_ctl = KLController(rl.beta, rl.target_kl)
    loop = _Loop(ctx, max_steps, callbacks)
    loop.resume(policy, critic, optimizer, scheduler, kl_ctl)

    window: list[dict[str, float]] = []
    loop.fire("on_train_begin", model=policy)  # its shape: FLOPs per token for MFU
    while loop.state.global_step < max_steps:
        step = loop.state.global_step
        loop.fire("on_step_begin")
        torch.manual_seed(t.seed + step)  # a resumed run samples exactly what the killed one would have
        batch = [p for p in step_prompts(prompts, step, per_step, t.seed) for _ in range(rl.num_generations)]
        data = rollout(policy, reference, critic, tokenizer, score_fn, batch, rl, kl_ctl)
        stats = ppo_update(policy, critic, optimizer, scheduler, data, rl, minibatches,
                           torch.Generator().manual_seed(t.seed + step))
        kl_per_completion = float(data.kl.sum(dim=1).mean())
        stats.update(reward=float(data.scores.mean()), kl=float(masked_mean(data.kl, data.mask)),
                     kl_per_completion=kl_per_completion, beta=kl_ctl.beta, learning_rate=scheduler.get_last_lr()[0])
        stats.update({f"rewards/{name}/mean": value for name, value in means.items()})
        kl_ctl.update(kl_per_completion, len(batch))
        window.append(stats)
        loop.state.global_step = step + 1
        loop.state.num_input_tokens_seen += int(data.attention_mask.sum())
        loop.fire("on_step_end", model=policy)
        if not is_finite(stats) or loop.state.global_step % t.logging_steps == 0 or loop.state.global_step == max_steps:
            loop.log({k: sum(s[k] for s in window) / len(window) for k in window[0]})  # NaN: ProgressCallback fails the stage
            window = []
        if loop.control.should_save or loop.state.global_step % t.save_steps == 0 or loop.state.global_step == max_steps:
            loop.save(policy, critic, optimizer, scheduler, kl_ctl, tokenizer)
        if loop.control.should_training_stop:
            break
    loop.fire("on_train_end")
    ctx.steps = loop.state.global_step
    if ctx.stop_requested:
        raise TerminatedError(f"stage {ctx.stage.name!r} stopped by SIGTERM after a checkpoint at step {ctx.steps}")
    return loop.state.log_history


def critic_network(ctx, rewards):
    """The critic's network: the first reward model of `rl.rewards` (a fresh copy: the reward itself stays
    frozen), or, with verifier rewards only, the policy's own network with a new one-output head."""
    from .stages.rlhf import load_reward_model_from

    model = next((r for r in rewards if r.kind == "model"), None)
    if model is not None:
        return load_reward_model_from(ctx, model.model.name_or_path)[0]
    return load_reward_model_from(ctx, ctx.init_model_dir)[0]


def step_prompts(prompts: list, step: int, per_step: int, seed: int) -> list:
    """The prompts of `step`: consecutive slices of one seeded permutation per epoch (a pure function of step)."""
    out: list[str] = []
    start = step * per_step
    while len(out) < per_step:
        epoch, offset = divmod(start + len(out), len(prompts))
        order = list(range(len(prompts)))
        random.Random(seed * 100_003 + epoch).shuffle(order)
        out += [prompts[i] for i in order[offset : offset + per_step - len(out)]]
    return out


class _Loop:
    """Trainer-shaped state for the shared TrainerCallbacks (markers, progress, NaN check, metrics)."""

    def __init__(self, ctx, max_steps: int, callbacks=()):
        from types import SimpleNamespace

        from transformers import TrainerControl, TrainerState

        t = ctx.training
        self.ctx, self.callbacks = ctx, [*ctx.callbacks(), *callbacks]
        self.state = TrainerState(max_steps=max_steps, logging_steps=t.logging_steps, save_steps=t.save_steps)
        self.control = TrainerControl()
        fields = dict(output_dir=str(ctx.checkpoints_dir), per_device_train_batch_size=t.batch_size,
                      gradient_accumulation_steps=t.gradient_accumulation_steps, world_size=1)
        # to_json_string: what TrainingArguments offer the tracker callbacks (TensorBoard records it as text).
        self.args = SimpleNamespace(**fields, to_json_string=lambda: json.dumps(fields, sort_keys=True))

    def fire(self, event: str, **kwargs) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self.args, self.state, self.control, **kwargs)

    def log(self, logs: dict[str, float]) -> None:
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self.fire("on_log", logs=logs)

    def save(self, policy, critic, optimizer, scheduler, kl_ctl, tokenizer) -> None:
        path = self.ctx.checkpoints_dir / f"checkpoint-{self.state.global_step}"
        policy.save_pretrained(path)
        tokenizer.save_pretrained(path)
        critic.classifier.save_pretrained(path / VALUE_DIR)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "beta": kl_ctl.beta},
                   path / STATE_FILE)
        self.state.save_to_json(str(path / "trainer_state.json"))
        self.fire("on_save")  # CheckpointMarkerCallback: fsync, marker last, rotation, report
        self.control.should_save = False

    def resume(self, policy, critic, optimizer, scheduler, kl_ctl) -> None:
        """Load the newest complete checkpoint that loads (falling back to older ones), as `StageContext.train` does."""
        from safetensors.torch import load_file
        from transformers import TrainerState

        from refinery.api.v1alpha1 import Checkpoint

        from . import checkpoints as ckpt

        for path in self.ctx.complete_checkpoints():
            if not ckpt.is_checkpoint_loadable(path) or not (path / STATE_FILE).is_file():
                log.warning("checkpoint %s is marked complete but lacks its state or weights; skipping it", path)
                continue
            try:
                policy.load_state_dict(load_file(path / "model.safetensors"))
                critic.classifier.load_state_dict(load_file(path / VALUE_DIR / "model.safetensors"))
                saved = torch.load(path / STATE_FILE, weights_only=True)
                optimizer.load_state_dict(saved["optimizer"])
                scheduler.load_state_dict(saved["scheduler"])
                state = TrainerState.load_from_json(str(path / "trainer_state.json"))
            except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint: fall back to the one before
                log.warning("resuming from %s failed (%s: %s); trying the checkpoint before it", path, type(exc).__name__, exc)
                continue
            kl_ctl.beta = float(saved["beta"])
            self.state.global_step, self.state.log_history = state.global_step, state.log_history
            self.state.num_input_tokens_seen = state.num_input_tokens_seen
            marker = ckpt.read_marker(path) or {}
            self.ctx.resumed_from = Checkpoint(step=state.global_step, path=str(path), time=marker.get("time"))
            self.ctx.reporter.update(force=True, resumed_from=self.ctx.resumed_from, step=state.global_step)
            log.info("ppo: resumed from %s (step %d)", path, state.global_step)
            return
