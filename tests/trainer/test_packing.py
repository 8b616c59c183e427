"""Packing is exact: the sft stage's packed, padding-free batches give the same loss as padded
batches of the same rows, under every attention implementation that runs on a CPU."""

from __future__ import annotations

import pytest

from refinery.api.run import StageRun
from refinery_trainer.context import StageContext
from refinery_trainer.packing import use_row_packing
from refinery_trainer.stages.sft import chat_loss_plan, sft_config
from refinery_trainer.stages.sft import sft_dataset

from .conftest import sft_rows, stage_run

MAX_LENGTH = 64


def _trainer(workspace, model, tokenizer, rows, packing: bool, chat: bool, layout: str = "rows"):
    from datasets import Dataset
    from trl import SFTTrainer

    run = stage_run(workspace, "sft", "sft", data={"path": "unused.jsonl"}, from_="pretrain",
                    training={"batchSize": 8, "packing": packing})
    ctx = StageContext(StageRun.model_validate(run))
    plan = chat_loss_plan(ctx, tokenizer, chat, [r["messages"] for r in rows[:16]] if chat else None)  # chat rows arrive tokenized with their assistant masks
    config = sft_config(ctx, MAX_LENGTH, plan, output_dir=str(workspace / f"out-{packing}"))
    trainer = SFTTrainer(model=model, args=config, train_dataset=sft_dataset(tokenizer, Dataset.from_list(rows), plan),
                         processing_class=tokenizer)
    if packing and layout == "rows":  # what the stage does unless the attention is FlashAttention's
        use_row_packing(trainer, tokenizer.pad_token_id)
    return trainer


def _summed_loss(model, batches) -> tuple[float, int, int]:
    """(summed next-token NLL over every labelled token, labelled tokens, rows) of the batches."""
    import torch
    import torch.nn.functional as F

    total, tokens, rows = 0.0, 0, 0
    with torch.no_grad():
        for batch in batches:
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
            logits = model(**inputs).logits.float()
            labels = batch["labels"][:, 1:]
            nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100,
                                  reduction="sum")
            total += float(nll)
            tokens += int((labels != -100).sum())
            rows += batch["input_ids"].size(0)
    return total, tokens, rows


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("chat", [False, True], ids=["prompt-completion", "messages"])
@pytest.mark.parametrize("layout", ["rows", "flattened"])
def test_packed_batches_have_the_loss_of_the_unpacked_rows(pretrained, workspace, attention, chat, layout):
    """`rows`: batchSize packed rows (sdpa, eager); `flattened`: TRL's padding-free single row (FlashAttention's layout)."""
    from refinery_trainer.modeling import load_model
    from refinery_trainer.tokenizer import load_tokenizer

    model_dir = pretrained / "model"
    tokenizer = load_tokenizer(model_dir)
    rows = sft_rows(48, seed=3, chat=chat)
    scorer = load_model(model_dir, attn_implementation=attention).eval()  # the same weights score both
    figures = {}
    for packing in (True, False):
        trainer = _trainer(workspace, load_model(model_dir, attn_implementation=attention), tokenizer, rows, packing, chat,
                           layout)
        batches = list(trainer.get_train_dataloader())
        if packing:  # examples with restarting positions and no mask: rows of up to MAX_LENGTH, or one flat row
            assert all("attention_mask" not in b and "position_ids" in b for b in batches)
            widths = {b["input_ids"].size(1) for b in batches}
            assert max(widths) <= MAX_LENGTH if layout == "rows" else max(widths) > MAX_LENGTH
        figures[packing] = _summed_loss(scorer, batches)
    (packed, packed_tokens, packed_rows), (padded, padded_tokens, padded_rows) = figures[True], figures[False]
    assert packed_tokens == padded_tokens > 0  # the same labelled tokens (completions / assistant turns)
    assert packed == pytest.approx(padded, rel=1e-5)  # and the same loss on them
    assert packed_rows < padded_rows  # fewer forward rows: the short examples share them


def test_packing_is_on_by_default_and_can_be_turned_off(workspace):
    run = stage_run(workspace, "sft", "sft", data={"path": "d.jsonl"}, from_="x")
    ctx = StageContext(StageRun.model_validate(run))
    assert sft_config(ctx, MAX_LENGTH).packing is True
    run["stage"]["training"]["packing"] = False
    assert sft_config(StageContext(StageRun.model_validate(run)), MAX_LENGTH).packing is False
