"""pretrain: causal language modelling on raw text with `transformers.Trainer`.

    refinery-train run --config stage.yaml      # stage.type: pretrain

tokenizer (the model's, or a byte-level BPE trained on the corpus) → documents → blocks of
`training.seqLen` tokens → model (fresh Llama from `model.config`, or `model.path`/`model.hubId`)
→ Trainer → evaluate, train, evaluate → `model/`.
Metrics: `initialEvalLoss`, `evalLoss` (held-out loss before/after), `trainLoss`.
"""

from __future__ import annotations

import logging

from ..context import StageContext
from ..errors import DataError, StageError

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> dict[str, float]:
    from . import pretrain_stream

    if pretrain_stream.wants_streaming(ctx.data_file(ctx.data.path)):  # shards, or a file too big to read whole
        return pretrain_stream.run(ctx)
    train_rows, eval_rows = ctx.load_rows(ctx.data.text_field, hint="data.textField")
    field = ctx.data.text_field
    train_texts = [r[field] for r in train_rows.require_text(field).rows]
    eval_texts = [r[field] for r in eval_rows.require_text(field).rows]

    from transformers import Trainer, TrainingArguments, default_data_collator  # after the data checks: fail fast

    tokenizer = _tokenizer(ctx, train_texts)
    model = _model(ctx, tokenizer)
    seq_len = min(ctx.training.seq_len, model.config.max_position_embeddings)
    train_blocks = pack(tokenize_documents(tokenizer, train_texts), seq_len)
    eval_blocks = pack(tokenize_documents(tokenizer, eval_texts), seq_len)
    if not train_blocks or not eval_blocks:
        which = ctx.data.path if not train_blocks else (ctx.data.eval_path or f"the held-out part of {ctx.data.path}")
        raise DataError(f"{which}: fewer than training.seqLen={seq_len} tokens of text; add text or lower seqLen")
    log.info("pretrain: %d train / %d eval blocks of %d tokens", len(train_blocks), len(eval_blocks), seq_len)

    trainer = Trainer(
        model=model,
        args=TrainingArguments(**ctx.training_args_kwargs()),
        train_dataset=train_blocks,
        eval_dataset=eval_blocks,
        data_collator=default_data_collator,
        processing_class=tokenizer,
        callbacks=ctx.callbacks(),
    )
    metrics = ctx.train_and_evaluate(trainer)
    ctx.save_final(trainer.model, tokenizer)
    return metrics


def tokenize_documents(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each document, wrapped in BOS … EOS so the model learns where texts end."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return [bos + doc + eos for doc in ids]


def pack(documents: list[list[int]], seq_len: int) -> list[dict]:
    """Concatenate documents and cut them into full `seq_len` blocks (the remainder is dropped)."""
    stream = [t for doc in documents for t in doc]
    return [
        {"input_ids": stream[i : i + seq_len], "labels": stream[i : i + seq_len]}
        for i in range(0, len(stream) - seq_len + 1, seq_len)
    ]


def _tokenizer(ctx: StageContext, corpus: list[str]):
    from ..tokenizer import load_tokenizer, train_bpe_tokenizer

    source = ctx.stage.model
    if source is not None and source.tokenizer:
        return load_tokenizer(_path_or_id(ctx, source.tokenizer))
    if source is None or source.config is None:  # a saved model or hub id: its own tokenizer
        return load_tokenizer(_model_location(ctx))
    resume = ctx.resume_checkpoint
    if resume is not None and (resume / "tokenizer.json").is_file():
        return load_tokenizer(resume)  # a resumed attempt must keep the vocabulary its weights were trained with
    return train_bpe_tokenizer(corpus, vocab_size=source.vocab_size)


def _model(ctx: StageContext, tokenizer):
    from ..modeling import build_model, load_model

    source = ctx.stage.model
    if source is not None and source.config is not None:
        return build_model(source.config, tokenizer, seed=ctx.training.seed, **ctx.model_kwargs())
    model = load_model(_model_location(ctx), **ctx.model_kwargs())
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    return model


def _model_location(ctx: StageContext) -> str:
    source = ctx.stage.model
    if source is None:  # `from` another stage: continued pretraining
        return str(ctx.init_model_dir)
    if source.path:
        return str(ctx.resolve(source.path))
    if source.hub_id:  # the copy the pipeline's fetch made, else the hub id (downloaded here, as before)
        from refinery.api.sources import hub_uri

        return str(ctx.resolve(hub_uri(source.hub_id))) if hub_uri(source.hub_id) in ctx.run.sources else source.hub_id
    raise StageError("pretrain: the model source has neither path nor hubId")


def _path_or_id(ctx: StageContext, value: str) -> str:
    path = ctx.resolve(value)
    return str(path) if path.exists() else value
