"""reward: a reward model trained on preference pairs with TRL's `RewardTrainer`.

    refinery-train run --config stage.yaml      # stage.type: reward

tokenizer + rows (`chosen`/`rejected`, with a `prompt` column when the file has one) → token ids
of `prompt + response` as RL trainers score them (see `scoring`) → model: the `from` stage's
`model/` as `AutoModelForSequenceClassification` with one label (a fresh, seeded score head on
the SFT model) → RewardTrainer (Bradley-Terry loss) → evaluate, train, evaluate → `model/`,
loadable by the rlhf stage.
Metrics: `initialEvalAccuracy`, `evalAccuracy` (share of held-out pairs whose chosen response
scores strictly higher, before/after training), `initialEvalLoss`, `evalLoss`, `evalMargin`,
`trainLoss`.
With `training.lora`, only LoRA adapters and the score head are trained (see `refinery_trainer.lora`).
This module is the only place RewardConfig appears.
"""

from __future__ import annotations

import logging

from ..context import StageContext
from ..data import is_chat_pairs, preference_columns

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> dict[str, float]:
    train_rows, eval_rows = ctx.load_data()  # data first: a bad file fails in a second, not after loading
    columns = preference_columns(ctx.data, train_rows, eval_rows)
    train, held_out = train_rows.select(columns), eval_rows.select(columns)  # datasets.Dataset, memory-mapped
    tokenizer = ctx.load_tokenizer()
    if is_chat_pairs(ctx.data, train_rows):  # conversational pairs: rendered with the model's chat template
        train, held_out = render_pairs(tokenizer, train), render_pairs(tokenizer, held_out)
    model = load_reward_model(ctx, tokenizer)

    from trl import RewardConfig, RewardTrainer

    from ..scoring import pairwise_accuracy

    config = RewardConfig(
        **ctx.training_args_kwargs(),
        max_length=min(ctx.training.seq_len, model.config.max_position_embeddings),  # longer pairs are dropped
        disable_dropout=True,
        dataset_num_proc=None,
    )
    trainer = RewardTrainer(
        model=model,
        args=config,
        train_dataset=tokenize_pairs(tokenizer, train),
        eval_dataset=tokenize_pairs(tokenizer, held_out),
        processing_class=tokenizer,
        peft_config=ctx.lora_config("reward"),  # None unless training.lora
        callbacks=ctx.callbacks(),
    )
    initial_accuracy = pairwise_accuracy(model, tokenizer, held_out)
    metrics = ctx.train_and_evaluate(trainer)
    # TRL's evalAccuracy is a mean of per-batch means; these count every held-out pair once.
    metrics["initialEvalAccuracy"] = initial_accuracy
    metrics["evalAccuracy"] = pairwise_accuracy(trainer.model, tokenizer, held_out)
    log.info("reward: held-out pairwise accuracy %.3f -> %.3f", initial_accuracy, metrics["evalAccuracy"])
    ctx.save_final(trainer.model, tokenizer)
    return metrics


def load_reward_model(ctx: StageContext, tokenizer):
    """The init model with a one-output classification head (new, so transformers reports its
    weights as newly initialised); the head's initialisation is seeded."""
    from transformers import AutoModelForSequenceClassification, set_seed

    from ..modeling import load_model

    set_seed(ctx.training.seed)
    model = load_model(ctx.init_model_dir, AutoModelForSequenceClassification, num_labels=1, **ctx.model_kwargs())
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last non-pad token
    return model


def render_pairs(tokenizer, dataset):
    """Conversational pairs as text, as TRL renders them (`maybe_apply_chat_template`): the prompt's turns
    with the generation prompt, and each answer as the rest of the rendered conversation, so prompt +
    chosen is the whole chat the reward model scores."""
    from trl.data_utils import maybe_apply_chat_template

    return dataset.map(maybe_apply_chat_template, fn_kwargs={"processing_class": tokenizer})


def tokenize_pairs(tokenizer, dataset):
    """RewardTrainer's pre-tokenized format: `chosen_ids`/`rejected_ids` of prompt + response (a batched
    map of the Arrow dataset)."""
    from ..scoring import reward_input_ids

    def tokenize(batch):
        prompts = batch["prompt"] if "prompt" in batch else [""] * len(batch["chosen"])
        return {
            "chosen_ids": [reward_input_ids(tokenizer, p, c) for p, c in zip(prompts, batch["chosen"], strict=True)],
            "rejected_ids": [reward_input_ids(tokenizer, p, r) for p, r in zip(prompts, batch["rejected"], strict=True)],
        }

    return dataset.map(tokenize, batched=True, remove_columns=dataset.column_names)
