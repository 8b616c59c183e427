"""Packed sft rows that stay rows: the collator for attention implementations without varlen kernels.

TRL's best-fit packing (`packing_strategy="bfd"`) turns on its padding-free collator, which
flattens the whole batch into one sequence: right for FlashAttention, whose varlen kernels read
the sequence boundaries, but quadratic for `sdpa`/`eager`, which then attend over the batch's
every token (batchSize x seqLen squared) through a mask that hides most of it — on a CPU, packed
sft ran 25x slower per token than unpacked. `RowPackedCollator` keeps each packed row a row of
the batch (batchSize x seqLen) with position ids that restart at every example and no attention
mask, from which transformers builds a block-diagonal causal mask per row: each example still
attends only to itself (tests/trainer/test_packing.py checks the loss equals the unpacked one).

    trainer = SFTTrainer(..., args=SFTConfig(packing=True, ...))
    use_row_packing(trainer, tokenizer.pad_token_id)   # unless attention is flash_attention_2
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")


@dataclass
class RowPackedCollator(DataCollatorForLanguageModeling):
    return_position_ids: bool = True

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        # With a mask, transformers would take the row as one sequence; without, it reads the
        # restarting position ids (padding: position 0, a segment of its own, label -100).
        batch.pop("attention_mask", None)
        # The first token of each example is not predicted from the example before it.
        batch["labels"][batch["position_ids"] == 0] = -100
        return batch


def use_row_packing(trainer, pad_token_id: int) -> None:
    """Swap the padding-free collator of a packing SFTTrainer for `RowPackedCollator`, unless the
    model's attention has varlen kernels (FlashAttention), for which flattening is the fast layout."""
    if trainer.model.config._attn_implementation in VARLEN_ATTENTION:
        return
    # After construction: SFTTrainer refuses a custom collator whenever packing is on, since its
    # own padded collator would mix examples; this one does not.
    trainer.data_collator = RowPackedCollator(pad_token_id=pad_token_id)
