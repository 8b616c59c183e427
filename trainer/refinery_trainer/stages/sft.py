"""sft: supervised fine-tuning with TRL's `SFTTrainer`, starting from the `from` stage's model.

    refinery-train run --config stage.yaml      # stage.type: sft

tokenizer + model (the `from` stage's `model/`) → rows: `messages` (a chat) when the file has
that column, else `prompt`/`completion` → SFTTrainer (loss on the completion/assistant part
only) → evaluate, train, evaluate → `model/`.
Metrics: `initialEvalLoss`, `evalLoss` (held-out loss before/after), `trainLoss`.
With `training.lora`, only LoRA adapters are trained (see `refinery_trainer.lora`). Training rows are
packed (`training.packing`, default on): tests/trainer/test_packing.py shows the loss is the same.
This module is the only place SFTConfig appears.
"""

from __future__ import annotations

import logging

from ..context import StageContext
from ..data import Table

log = logging.getLogger(__name__)


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

    from datasets import Dataset
    from trl import SFTTrainer

    from ..packing import use_row_packing

    trainer = SFTTrainer(
        model=model,
        args=sft_config(ctx, min(ctx.training.seq_len, model.config.max_position_embeddings), chat),
        train_dataset=Dataset.from_list(train_rows.select(columns)),
        eval_dataset=Dataset.from_list(eval_rows.select(columns)),
        processing_class=tokenizer,
        peft_config=ctx.lora_config("causal"),  # None unless training.lora
        callbacks=ctx.callbacks(),
    )
    if trainer.args.packing:  # rows of batchSize x seqLen, unless FlashAttention reads flattened batches faster
        use_row_packing(trainer, tokenizer.pad_token_id)
    metrics = ctx.train_and_evaluate(trainer)
    ctx.save_final(trainer.model, tokenizer)
    return metrics


def sft_config(ctx: StageContext, max_length: int, chat: bool, **overrides):
    """The stage's SFTConfig: `training` as every stage has it, plus packing and the loss mask."""
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
        # Loss on what the model should learn to say: the completion, or the assistant turns.
        completion_only_loss=None if not chat else False,
        assistant_only_loss=chat,
        dataset_num_proc=None,
    )


def _columns(ctx: StageContext, table: Table) -> dict[str, str]:
    """TRL column name → the file's column: the chat when present, else prompt and completion."""
    spec = ctx.data
    if table.has_column(spec.messages_field):
        return {"messages": spec.messages_field}
    return {"prompt": spec.prompt_field, "completion": spec.completion_field}


def _hint(ctx: StageContext, columns: dict[str, str]) -> str:
    return "data.messagesField" if "messages" in columns else "data.promptField/data.completionField"
