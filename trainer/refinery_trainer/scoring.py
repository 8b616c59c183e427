"""Scoring text with a reward model and sampling a policy: shared by the reward and rlhf stages.

    ids = reward_input_ids(tokenizer, "What does the cow say?", " moo")
    rewards = score(reward_model, reward_tokenizer, prompts, completions)
    completions = generate(policy, tokenizer, prompts, max_new_tokens=8)   # greedy

A reward model reads `prompt + completion` tokenized with no special tokens added and scores the
last token. That is exactly what TRL's RLOOTrainer and GRPOTrainer feed a reward model during
RL (`_calculate_rewards`: the texts concatenated, `add_special_tokens=False`, special tokens of
the sampled completion skipped), so the reward stage trains on the same view of a text that the
rlhf stage later scores — not on TRL RewardTrainer's default, which appends an EOS token that
RL-time scoring never shows it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

BATCH = 64  # texts per forward pass when scoring or generating


def reward_input_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str) -> list[int]:
    """Token ids a reward model scores for one (prompt, completion)."""
    return tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]


def score(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], completions: list[str]) -> list[float]:
    """The reward model's scalar for each (prompt, completion), as RL trainers compute it."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    rewards: list[float] = []
    for i in range(0, len(prompts), BATCH):
        texts = [p + c for p, c in zip(prompts[i : i + BATCH], completions[i : i + BATCH], strict=True)]
        batch = tokenizer(texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
        with torch.inference_mode():
            rewards += model(**batch.to(device)).logits[:, 0].float().tolist()
    return rewards


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    *,
    temperature: float | None = None,
) -> list[str]:
    """Completions of `prompts`, special tokens removed: greedy unless a temperature is given.

    Prompts are tokenized the way RL trainers tokenize them (the tokenizer's defaults).
    """
    import torch

    model.eval()
    device = next(model.parameters()).device
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature else {"do_sample": False}
    completions: list[str] = []
    for i in range(0, len(prompts), BATCH):
        batch = tokenizer(prompts[i : i + BATCH], return_tensors="pt", padding=True, padding_side="left")
        with torch.inference_mode():
            out = model.generate(
                **batch.to(device),
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **sampling,
            )
        completions += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return completions


def generate_counted(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    *,
    temperature: float | None = None,
) -> tuple[list[str], list[int]]:
    """Like `generate`, plus each completion's length in tokens up to (not counting) its EOS: a
    completion as long as `max_new_tokens` never ended on its own (truncated)."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature else {"do_sample": False}
    texts: list[str] = []
    counts: list[int] = []
    for i in range(0, len(prompts), BATCH):
        batch = tokenizer(prompts[i : i + BATCH], return_tensors="pt", padding=True, padding_side="left")
        with torch.inference_mode():
            out = model.generate(**batch.to(device), max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, **sampling)
        new = out[:, batch["input_ids"].shape[1] :]
        for row in new.tolist():
            ends = [j for j, t in enumerate(row) if t == tokenizer.eos_token_id]
            counts.append(ends[0] if ends else len(row))
        texts += tokenizer.batch_decode(new, skip_special_tokens=True)
    return texts, counts


def pairwise_accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[dict]) -> float:
    """Share of `{prompt, chosen, rejected}` rows where the chosen response scores strictly higher."""
    prompts = [r.get("prompt", "") for r in rows]
    chosen = score(model, tokenizer, prompts, [r["chosen"] for r in rows])
    rejected = score(model, tokenizer, prompts, [r["rejected"] for r in rows])
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(rows)
