"""sft: supervised fine-tuning with TRL's `SFTTrainer`, starting from the `from` stage's model.

    refinery-train run --config stage.yaml      # stage.type: sft

tokenizer + model (the `from` stage's `model/`) → rows: `messages` (a chat) when the file has
that column, else `prompt`/`completion` → SFTTrainer (loss on `training.lossOn`: the assistant
turns or the completion by default, on any chat template: see refinery_trainer.lossmask) →
evaluate, train, evaluate → `model/`.
Metrics: `initialEvalLoss`, `evalLoss` (held-out loss before/after), `trainLoss`.
With `training.lora`, only LoRA adapters are trained (see `refinery_trainer.lora`). Training rows are
packed (`training.packing`, default on): tests/trainer/test_packing.py shows the loss is the same.
This module is the only place SFTConfig appears.
"""

from __future__ import annotations

import logging

from ..context import StageContext
from ..errors import MisconfiguredError

log = logging.getLogger(__name__)
SAMPLE_ROWS = 16  # conversations the chat template is tried on before choosing how to mask the loss


def run(ctx: StageContext) -> dict[str, float]:
    train_rows, eval_rows = ctx.load_data()  # data first: a bad file fails in a second, not after loading
    columns = _columns(ctx, train_rows)
    train_rows.require(*columns.values(), hint=_hint(ctx, columns))
    eval_rows.require(*columns.values(), hint=_hint(ctx, columns))
    chat = "messages" in columns
    for table in (train_rows, eval_rows):
        if chat:
            table.require_messages(columns["messages"])
        else:
            table.require_text(*columns.values())
    model, tokenizer = ctx.load_causal_lm()

    from trl import SFTTrainer

    from ..packing import use_row_packing

    plan = chat_loss_plan(ctx, tokenizer, chat, [row[columns["messages"]] for row in train_rows.head(SAMPLE_ROWS)] if chat else None)
    try:
        trainer = SFTTrainer(
            model=model,
            args=sft_config(ctx, min(ctx.training.seq_len, model.config.max_position_embeddings), plan),
            train_dataset=sft_dataset(tokenizer, train_rows.select(columns), plan),
            eval_dataset=sft_dataset(tokenizer, eval_rows.select(columns), plan),
            processing_class=tokenizer,
            peft_config=ctx.lora_config("causal"),  # None unless training.lora
            callbacks=ctx.callbacks(),
        )
    except ValueError as exc:  # TRL's "The chat template is not training-compatible": the same on every retry
        if "chat template" not in str(exc):
            raise
        raise MisconfiguredError(f"TRL refuses the tokenizer's chat template ({exc}): set training.lossOn: all, or "
                                 "give the tokenizer a template with {% generation %} markers") from None
    if trainer.args.packing:  # rows of batchSize x seqLen, unless FlashAttention reads flattened batches faster
        use_row_packing(trainer, tokenizer.pad_token_id)
    metrics = ctx.train_and_evaluate(trainer)
    ctx.save_final(trainer.model, tokenizer)
    return metrics


def chat_loss_plan(ctx: StageContext, tokenizer, chat: bool, sample: list | None):
    """How the loss is masked (`training.lossOn`, refinery_trainer.lossmask), tried on `sample` (the first
    conversations). Raises MisconfiguredError for `messages` data on a tokenizer without a chat template
    (preflight says so first)."""
    from ..lossmask import loss_plan

    if chat and not getattr(tokenizer, "chat_template", None):
        raise MisconfiguredError(
            f"the tokenizer of {ctx.init_model_dir} has no chat template, which `messages` data needs: use "
            "prompt/completion data (data.promptField/data.completionField), or a tokenizer with a chat_template")
    plan = loss_plan(tokenizer, chat, ctx.training.loss_on, sample if chat else None)
    if plan.note:
        log.warning("%s", plan.note)
    return plan


def sft_dataset(tokenizer, dataset, plan):
    """The dataset handed to SFTTrainer: as it is (TRL tokenizes it), or tokenized with its loss mask
    (a batched map: the token ids land in an Arrow file beside the data's, not in Python lists)."""
    if not plan.pretokenize:
        return dataset
    from ..lossmask import tokenize_chats

    return dataset.map(lambda batch: _columns_of(tokenize_chats(tokenizer, batch["messages"], plan.loss_on)),
                       batched=True, remove_columns=dataset.column_names)


def _columns_of(rows: list[dict]) -> dict[str, list]:
    """Rows (dicts) as a batch of columns, as `Dataset.map(batched=True)` returns them."""
    return {key: [row[key] for row in rows] for key in rows[0]} if rows else {}


def sft_config(ctx: StageContext, max_length: int, plan=None, **overrides):
    """The stage's SFTConfig: `training` as every stage has it, plus packing and the loss mask
    (`plan`: a refinery_trainer.lossmask.LossPlan; None: prompt/completion with the completion's loss)."""
    from trl import SFTConfig

    return SFTConfig(
        **ctx.training_args_kwargs(**overrides),
        max_length=max_length,
        # Packed by default: best-fit rows of max_length tokens, each example restarting its position
        # ids, which every attention implementation turns into its own causal attention (see
        # refinery_trainer.packing), so a step trains on batchSize full rows instead of batchSize
        # padded examples. Examples longer than max_length are truncated, as without packing.
        # Held-out batches stay unpacked: evalLoss keeps its per-example batching either way.
        packing=ctx.training.packing is not False,
        packing_strategy="bfd",
        eval_packing=False,
        # Loss on what the model should learn to say (training.lossOn). Chat rows come tokenized with
        # their `assistant_masks` (refinery_trainer.lossmask), which TRL folds into the labels itself;
        # TRL's own assistant_only_loss only for templates whose turns rendering cannot tell apart.
        completion_only_loss=None if plan is None else plan.completion_only_loss,
        assistant_only_loss=False if plan is None else plan.assistant_only_loss,
        dataset_num_proc=None,
    )


def _columns(ctx: StageContext, table) -> dict[str, str]:
    """TRL column name → the file's column: the chat when present, else prompt and completion."""
    spec = ctx.data
    if table.has_column(spec.messages_field):
        return {"messages": spec.messages_field}
    return {"prompt": spec.prompt_field, "completion": spec.completion_field}


def _hint(ctx: StageContext, columns: dict[str, str]) -> str:
    return "data.messagesField" if "messages" in columns else "data.promptField/data.completionField"
