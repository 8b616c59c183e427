"""dpo: direct preference optimisation with TRL's `DPOTrainer` — alignment without a reward model.

    refinery-train run --config stage.yaml      # stage.type: dpo, dpo: {beta, lossType}

tokenizer + policy (the `from` stage's `model/`, usually sft) → rows `prompt`/`chosen`/`rejected`
(no `prompt` column: chosen/rejected are whole texts, TRL extracts their common prefix) →
reference = a frozen copy of the initial policy (with LoRA: the policy with its adapters off) →
DPOTrainer (`dpo.lossType`, `dpo.beta`) → held-out margins before/after → `model/`.

Metrics, over every held-out pair (x, y_w chosen, y_l rejected), where log pi(y|x) is the sum of
the log-probabilities of the response tokens (with the EOS that TRL appends) given the prompt,
tokenized exactly as DPOTrainer tokenizes them:
- `evalMargin`: mean of log pi(y_w|x) - log pi(y_l|x) for the trained policy pi.
- `initialEvalMargin`: the same for the initial policy, which is the reference pi_ref. So
  `evalMargin - initialEvalMargin` is the policy's margin relative to the reference, i.e. the mean
  DPO implicit-reward margin divided by beta; DPO should make it positive.
- `evalAccuracy`: share of pairs whose implicit reward beta * (log pi(y|x) - log pi_ref(y|x))
  is strictly higher for the chosen response (0 before training, when pi = pi_ref).
- `initialEvalLoss`, `evalLoss`: TRL's DPO loss on the held-out pairs (ln 2 = 0.693 at the
  start for the sigmoid loss); `trainLoss`: mean training loss of this attempt.
This module is the only place DPOConfig appears.
"""

from __future__ import annotations

import logging

from refinery.api.training import DpoSpec

from ..context import StageContext
from ..data import preference_columns

log = logging.getLogger(__name__)

BATCH = 64  # sequences per forward pass when scoring held-out pairs
_KEPT = ("initialEvalLoss", "evalLoss", "trainLoss")  # of TRL's many logged figures, the headline ones


def run(ctx: StageContext) -> dict[str, float]:
    train_rows, eval_rows = ctx.load_data()  # data first: a bad file fails in a second, not after loading
    columns = preference_columns(ctx.data, train_rows, eval_rows)
    policy, tokenizer = ctx.load_causal_lm()
    peft_config = ctx.lora_config("causal")

    from trl import DPOConfig, DPOTrainer

    from ..modeling import load_model

    spec = ctx.stage.dpo or DpoSpec()
    config = DPOConfig(
        **ctx.training_args_kwargs(),
        beta=spec.beta,
        loss_type=[spec.loss_type],
        max_length=min(ctx.training.seq_len, policy.config.max_position_embeddings),
        disable_dropout=True,
        dataset_num_proc=None,
    )
    trainer = DPOTrainer(
        model=policy,
        # An explicit frozen copy: TRL would otherwise reload `config._name_or_path`, which is not the
        # init model when that was a LoRA adapter folder. With LoRA, the adapter-free base is the reference.
        ref_model=None if peft_config is not None else load_model(ctx.init_model_dir, **ctx.model_kwargs()),
        args=config,
        train_dataset=train_rows.select(columns),  # datasets.Dataset in TRL's column names, memory-mapped
        eval_dataset=eval_rows.select(columns),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=ctx.callbacks(),
    )
    # Before training (and before a resume loads a checkpoint) the policy is the reference.
    reference = pair_logps(trainer.model, trainer.eval_dataset, tokenizer.pad_token_id, config.max_length)
    losses = ctx.train_and_evaluate(trainer)
    trained = pair_logps(trainer.model, trainer.eval_dataset, tokenizer.pad_token_id, config.max_length)
    metrics = {**{k: v for k, v in losses.items() if k in _KEPT}, **margins(trained, reference)}
    log.info("dpo: held-out margin %.3f -> %.3f, implicit-reward accuracy %.3f",
             metrics["initialEvalMargin"], metrics["evalMargin"], metrics["evalAccuracy"])
    ctx.save_final(trainer.model, tokenizer)
    return metrics


def margins(policy: tuple[list[float], list[float]], reference: tuple[list[float], list[float]]) -> dict[str, float]:
    """`evalMargin`, `initialEvalMargin`, `evalAccuracy` from (chosen, rejected) log-probs per pair."""
    (pc, pr), (rc, rr) = policy, reference
    n = len(pc)
    return {
        "evalMargin": sum(c - r for c, r in zip(pc, pr, strict=True)) / n,
        "initialEvalMargin": sum(c - r for c, r in zip(rc, rr, strict=True)) / n,
        "evalAccuracy": sum((c - c0) > (r - r0) for c, r, c0, r0 in zip(pc, pr, rc, rr, strict=True)) / n,
    }


def pair_logps(model, dataset, pad_id: int, max_length: int | None) -> tuple[list[float], list[float]]:
    """(log pi(chosen|prompt), log pi(rejected|prompt)) of each row of DPOTrainer's tokenized dataset."""
    prompts = list(dataset["prompt_ids"])
    return (response_logps(model, prompts, list(dataset["chosen_ids"]), pad_id, max_length),
            response_logps(model, prompts, list(dataset["rejected_ids"]), pad_id, max_length))


def response_logps(model, prompts: list[list[int]], responses: list[list[int]], pad_id: int,
                   max_length: int | None = None) -> list[float]:
    """Sum of log p(response token | everything before it) per (prompt, response) pair of token ids.

    Sequences longer than `max_length` keep their start, as DPOTrainer truncates them.
    """
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[float] = []
    for i in range(0, len(prompts), BATCH):
        seqs = [(p + r)[:max_length] if max_length else p + r for p, r in zip(prompts[i : i + BATCH], responses[i : i + BATCH])]
        starts = [len(p) for p in prompts[i : i + BATCH]]
        width = max(len(s) for s in seqs)
        ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        token_logps = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
        positions = torch.arange(1, width, device=device)[None, :]
        in_response = (positions >= torch.tensor(starts, device=device)[:, None]) & mask[:, 1:].bool()
        out += (token_logps * in_response).sum(dim=1).tolist()
    model.train(was_training)
    return out
