"""How a stage trains: optimisation, precision, LoRA, DeepSpeed, and the RL / DPO settings."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from .base import ApiModel
from .rewards import RewardList, reward_list_problems


class LoraSpec(ApiModel):
    """Train low-rank adapters (PEFT LoRA) instead of every weight."""

    r: int = Field(8, ge=1, le=1024, description="Rank of the adapters.")
    alpha: int = Field(16, ge=1, le=4096, description="Scaling numerator (the update is scaled by alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapters' input.")
    target_modules: list[Annotated[str, Field(max_length=63)]] | None = Field(
        None, max_length=32, description="Module names to adapt, e.g. [q_proj, v_proj]. Default: every linear layer."
    )
    save: Literal["merged", "adapter"] = Field(
        "merged",
        description="`merged`: the final model has the adapters folded in (loads without PEFT). `adapter`: only the "
        "adapter is saved, with a reference to its base model.",
    )


class DeepSpeedSpec(ApiModel):
    """DeepSpeed ZeRO for the stage's trainer (launched under torchrun)."""

    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="ZeRO stage: 1 shards optimizer state, 2 also gradients, 3 also weights.")
    offload_optimizer: bool = Field(False, description="Keep optimizer state in CPU memory (ZeRO-Offload).")
    offload_params: bool = Field(False, description="Keep weights in CPU memory (ZeRO-3 only).")
    config_path: str | None = Field(
        None, max_length=1024, description="A full DeepSpeed JSON config on the volume; overrides the fields above."
    )


class TrainingSpec(ApiModel):
    """Optimisation settings of one stage."""

    max_steps: int | None = Field(None, ge=1, le=10_000_000, description="Optimiser steps; overrides `epochs`.")
    epochs: float = Field(1.0, gt=0, le=10000, description="Passes over the training data when `maxSteps` is unset.")
    learning_rate: float = Field(5e-4, gt=0, le=1, description="Peak learning rate.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Share of steps with linear warm-up.")
    batch_size: int = Field(8, ge=1, le=65536, description="Sequences per device per step.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=4096, description="Micro-batches per optimiser step.")
    seq_len: int = Field(128, ge=8, le=1048576, description="Longest training sequence, in tokens.")
    save_steps: int = Field(50, ge=1, le=10_000_000, description="Write a checkpoint every this many steps.")
    eval_steps: int | None = Field(None, ge=1, le=10_000_000, description="Evaluate every this many steps (default: only at the end).")
    logging_steps: int = Field(10, ge=1, le=10_000_000, description="Report loss and progress every this many steps.")
    keep_checkpoints: int = Field(3, ge=1, le=1000, description="Newest checkpoints kept on the volume per stage.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Random seed (data order, initialisation, sampling).")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="`auto`: bf16 on GPUs that support it, else fp32 (always fp32 on CPU)."
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass to save memory.")
    lora: LoraSpec | None = Field(None, description="Train LoRA adapters instead of all weights (sft, reward, dpo, rlhf).")
    packing: bool | None = Field(
        None,
        description="sft: pack examples into rows of `seqLen` tokens with no padding (best-fit, each example its own "
        "positions and attention, so the loss is the unpacked one). Default: on. Pretrain always trains on full blocks.",
    )
    loss_on: Literal["assistant", "completion", "all"] = Field(
        "assistant",
        description="sft: the tokens the loss is computed on. `assistant`: every assistant turn of `messages` data "
        "(its end-of-turn token included), or the completion of prompt/completion data. `completion`: the last "
        "assistant turn only (the completion of prompt/completion data). `all`: every token, prompts and template "
        "included. Works on any chat template: without `{% generation %}` markers the assistant spans are found by "
        "rendering each conversation's prefixes.",
    )
    attention: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto",
        description="Attention implementation. `auto`: FlashAttention 2 on a GPU training in bf16/fp16 when flash-attn "
        "is installed, else PyTorch's `sdpa`.",
    )
    liger_kernel: bool = Field(
        False, description="Liger's fused Triton kernels (RMSNorm, RoPE, SwiGLU); needs a GPU and the liger-kernel package."
    )
    compile: bool = Field(False, description="torch.compile the model (inductor): slower first steps, faster after.")


VLLM_PPO_MESSAGE = "rl.generation vllm is for rloo and grpo (TRL's vLLM integration); ppo generates with transformers"


class RlSpec(ApiModel):
    """Reinforcement learning settings (rlhf stages)."""

    algorithm: Literal["rloo", "grpo", "ppo"] = Field(
        "rloo",
        description="`rloo` (TRL RLOOTrainer), `grpo` (TRL GRPOTrainer) or `ppo` (PPO with a value model "
        "initialised from the reward model).",
    )
    generation: Literal["hf", "vllm"] = Field(
        "hf",
        description="rloo, grpo: how completions are sampled. `hf`: transformers' generate. `vllm`: vLLM in the "
        "training process (TRL's colocate mode, sharing the GPU); needs a GPU and an image with vLLM.",
    )
    num_generations: int = Field(4, ge=1, le=256, description="Completions sampled per prompt (rloo, grpo: at least 2).")
    max_completion_length: int = Field(16, ge=1, le=65536, description="Longest sampled completion, in tokens.")
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling temperature.")
    beta: float = Field(0.05, ge=0, le=100, description="Weight of the KL penalty against the initial policy.")
    eval_prompts: int = Field(64, ge=1, le=100000, description="Held-out prompts scored (greedy) before and after training.")
    clip_range: float = Field(0.2, gt=0, le=10, description="ppo: clip range of the policy ratio.")
    value_clip_range: float = Field(0.2, gt=0, le=100, description="ppo: clip range of the value update.")
    value_coef: float = Field(0.1, ge=0, le=100, description="ppo: weight of the value loss.")
    gamma: float = Field(1.0, ge=0, le=1, description="ppo: discount factor.")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="ppo: GAE lambda.")
    ppo_epochs: int = Field(4, ge=1, le=100, description="ppo: optimisation passes over each batch of rollouts.")
    target_kl: float | None = Field(
        None, gt=0, le=100, description="ppo: adapt `beta` towards this KL per completion (adaptive KL controller); fixed when unset."
    )
    max_kl: float | None = Field(
        None, gt=0, le=1000,
        description="Raise the pipeline's RewardHacking warning when the logged KL to the initial policy exceeds this.",
    )
    stop_on_hacking: bool = Field(
        False,
        description="Stop (fail) the stage with reason RewardHacking instead of only warning, at the first verdict "
        "(completions collapsed or degenerate, KL above maxKl, the audit or the held-out exact match falling while the "
        "reward rises); no model is saved (the audit's best, if any, stays in audit-best/).",
    )
    rewards: RewardList | None = Field(
        None,
        description="What the policy is optimised against: a weighted sum of reward stages' models and verifiers "
        "(exactMatch, contains, numeric, regex, length, python). `rewardModel: X` is short for `[{model: X}]`.",
    )
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo"] | None = Field(
        None, description="grpo: TRL's loss formulation (GRPOConfig.loss_type); default: TRL's (`dapo`).",
    )
    mask_truncated_completions: bool = Field(
        False, description="rloo, grpo: leave completions cut at maxCompletionLength out of the loss (DAPO).",
    )
    audit: RewardList | None = Field(
        None,
        description="An independent judge the policy is not optimised against (a second reward stage, or verifiers): "
        "held-out prompts are scored under it every `auditSteps`; its fall while the reward rises is RewardOveroptimized.",
    )
    audit_steps: int | None = Field(
        None, ge=1, le=10_000_000,
        description="Score the held-out prompts (reward, audit, exact match, diversity) every this many steps. "
        "Default: training.loggingSteps.",
    )
    audit_patience: int = Field(
        3, ge=1, le=1000,
        description="Consecutive held-out evaluations the audit must fall, while the reward rises, to count as "
        "RewardOveroptimized (or once below its starting value).",
    )
    select_by: Literal["final", "audit"] | None = Field(
        None,
        description="Which model the stage saves as model/: `final` (the last step) or `audit` (the held-out "
        "evaluation with the best audit score). Default: `audit` when `audit` is set, else `final`.",
    )

    @model_validator(mode="after")
    def _group_baselines_need_groups(self) -> RlSpec:
        if self.algorithm in ("rloo", "grpo") and self.num_generations < 2:
            raise ValueError(f"{self.algorithm} compares completions of one prompt: numGenerations must be at least 2")
        if self.generation == "vllm" and self.algorithm == "ppo":
            raise ValueError(VLLM_PPO_MESSAGE)
        if self.loss_type is not None and self.algorithm != "grpo":
            raise ValueError("rl.lossType is a grpo setting (TRL's GRPO loss formulations); rloo and ppo have their own")
        if self.select_by == "audit" and self.audit is None:
            raise ValueError("rl.selectBy audit needs rl.audit: the judge whose best score picks the model")
        problems = reward_list_problems("rl.rewards", self.rewards or []) + reward_list_problems("rl.audit", self.audit or [])
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def selects_by_audit(self) -> bool:
        return self.select_by == "audit" or (self.select_by is None and self.audit is not None)


class DpoSpec(ApiModel):
    """Direct preference optimisation settings (dpo stages)."""

    beta: float = Field(0.1, gt=0, le=100, description="Strength of the implicit KL constraint to the reference policy.")
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field("sigmoid", description="DPO loss: sigmoid (the paper's), ipo or hinge.")
