"""pretrain on a corpus too big for memory: shards (a folder, e.g. a fetched s3:// prefix) or one
large file. Chosen by `pretrain.run` when `data.path` is a folder or a file over 64 MiB.

tokenizer (the model's; for `config`, a BPE trained on the first `TOKENIZER_SAMPLE_DOCS`
documents) → each shard's tokens written once to `<stage>/tokenized/<tokenizer key>/<shard key>/`
(sources/corpus.py; by the stage's rank 0, or before the stage by the parallel `refinery-train
tokenize` step, sources/tokenize.py, when `data.tokenize.workers` is set) → memory-mapped blocks of
`seqLen` across the shards' token files → Trainer. The held-out blocks are `data.evalPath`'s, else the last
`evalFraction` of the corpus' blocks (at most `MAX_EVAL_BLOCKS`), which training never sees.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

from ..context import StageContext
from ..errors import DataError
from ..sources.corpus import STREAM_BYTES, PackedBlocks, documents, tokenize_once
from ..sources.files import data_files

log = logging.getLogger(__name__)
TOKENIZER_SAMPLE_DOCS = 20_000  # documents a BPE tokenizer is trained on (a sample; the corpus may be TBs)
MAX_EVAL_BLOCKS = 256  # held-out blocks evaluated before and after training
TOKENIZED_DIR = "tokenized"


def wants_streaming(path: Path) -> bool:
    return path.is_dir() or (path.is_file() and path.stat().st_size > STREAM_BYTES)


def tokens_dir(ctx: StageContext) -> Path:
    """Where the stage's shards' tokens go (the tokenize step writes there too)."""
    return ctx.stage_dir / TOKENIZED_DIR


def corpora(ctx: StageContext) -> list[list[Path]]:
    """The shards to tokenize: the training corpus', then `evalPath`'s when set."""
    spec = ctx.data
    return [data_files(ctx.data_file(p)) for p in (spec.path, spec.eval_path) if p]


def corpus_tokenizer(ctx: StageContext, files: list[Path]):
    """The tokenizer the corpus is tokenized with: the model's, or (`config`) a BPE trained on the
    first `TOKENIZER_SAMPLE_DOCS` documents — deterministic, so the tokenize step's workers and the
    stage build the same one and key the same token files (a worker that did not would only make
    the stage tokenize those shards itself)."""
    from .pretrain import _tokenizer

    sample = list(itertools.islice(documents(files, ctx.data.text_field), TOKENIZER_SAMPLE_DOCS))
    if not sample:
        raise DataError(f"{ctx.data.path}: no documents")
    return _tokenizer(ctx, sample)


def run(ctx: StageContext) -> dict[str, float]:
    from transformers import Trainer, TrainingArguments, default_data_collator

    from .pretrain import _model

    spec = ctx.data
    files = data_files(ctx.data_file(spec.path))
    tokenizer = corpus_tokenizer(ctx, files)
    model = _model(ctx, tokenizer)
    seq_len = min(ctx.training.seq_len, model.config.max_position_embeddings)
    cache = tokens_dir(ctx)
    tokens = tokenize_once(files, tokenizer, spec.text_field, cache)
    if spec.eval_path:
        train = PackedBlocks(tokens, seq_len)
        held_out = PackedBlocks(tokenize_once(corpora(ctx)[1], tokenizer, spec.text_field, cache),
                                seq_len, stop=MAX_EVAL_BLOCKS)
    else:
        total = PackedBlocks.blocks_in(tokens, seq_len)
        n_eval = min(MAX_EVAL_BLOCKS, max(1, round(total * spec.eval_fraction)))
        train, held_out = PackedBlocks(tokens, seq_len, stop=total - n_eval), PackedBlocks(tokens, seq_len, start=total - n_eval)
    if len(train) < 1 or len(held_out) < 1:
        raise DataError(f"{spec.path}: fewer than two blocks of training.seqLen={seq_len} tokens; add text or lower seqLen")
    log.info("pretrain (streamed from %d shard(s)): %d train / %d eval blocks of %d tokens", len(files), len(train),
             len(held_out), seq_len)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**ctx.training_args_kwargs()),
        train_dataset=train,
        eval_dataset=held_out,
        data_collator=default_data_collator,
        processing_class=tokenizer,
        callbacks=ctx.callbacks(),
    )
    metrics = ctx.train_and_evaluate(trainer)
    ctx.save_final(trainer.model, tokenizer)
    return metrics
