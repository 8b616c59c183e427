"""`training.lossOn` on every family's chat template (tests/families.py), token by token.

The templates have no `{% generation %}` markers (TRL 1.16 refuses assistant-only loss on them:
"The chat template is not training-compatible"); the masks come from rendering each conversation's
prefixes (refinery_trainer.lossmask). Each expected run is the exact token ids of the text the
model must learn to say — the assistant's words and its family's end-of-turn token.
"""

from __future__ import annotations

import pytest

from refinery_trainer.errors import MisconfiguredError
from refinery_trainer.lossmask import loss_plan, tokenize_chat
from tests.families import FAMILIES, build_tokenizer

CHAT = [{"role": "user", "content": "What does the cow say?"}, {"role": "assistant", "content": "moo"},
        {"role": "user", "content": "And the duck?"}, {"role": "assistant", "content": "quack"}]
SYSTEM = [{"role": "system", "content": "Answer in one word."}, *CHAT]
# What each family's template writes for an assistant turn after the generation prompt (the last turn's).
END_OF_TURN = {"llama": ("<|eot_id|>", "<|eot_id|>"), "qwen2": ("<|im_end|>", "<|im_end|>"),
               "gemma2": ("<end_of_turn>", "<end_of_turn>"), "mistral": ("</s>", "</s>"),
               # Phi-3's template closes a conversation with EOS after the last turn's newline.
               "phi3": ("<|end|>", "<|end|>\n<|endoftext|>")}
CHAT_FAMILIES = sorted(END_OF_TURN)


@pytest.fixture(scope="module")
def tokenizers():
    return {name: build_tokenizer(FAMILIES[name]) for name in CHAT_FAMILIES}


def masked_runs(row: dict) -> list[list[int]]:
    """The token ids of each maximal run of masked (in-the-loss) tokens."""
    runs, current = [], []
    for token, bit in zip(row["input_ids"], row["assistant_masks"], strict=True):
        if bit:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("family", CHAT_FAMILIES)
@pytest.mark.parametrize("system", [False, True], ids=["no-system", "system"])
def test_assistant_loss_is_exactly_each_assistant_turn(tokenizers, family, system):
    if system and not FAMILIES[family].system:
        pytest.skip(f"{family}'s template refuses a system message, as the family's does")
    tok = tokenizers[family]
    row = tokenize_chat(tok, SYSTEM if system else CHAT, "assistant")
    middle, last = END_OF_TURN[family]
    assert masked_runs(row) == [ids(tok, "moo" + middle), ids(tok, "quack" + last)]
    assert row["input_ids"] == ids(tok, tok.apply_chat_template(SYSTEM if system else CHAT, tokenize=False))
    if FAMILIES[family].specials["bos"] and "bos_token" in FAMILIES[family].template:
        assert row["input_ids"].count(tok.bos_token_id) == 1  # the template's BOS, not a second one


@pytest.mark.parametrize("family", CHAT_FAMILIES)
def test_completion_loss_is_the_last_turn_and_all_is_every_token(tokenizers, family):
    tok = tokenizers[family]
    row = tokenize_chat(tok, CHAT, "completion")
    assert masked_runs(row) == [ids(tok, "quack" + END_OF_TURN[family][1])]
    plan = loss_plan(tok, chat=True, loss_on="all", sample=[CHAT])
    assert (plan.pretokenize, plan.assistant_only_loss, plan.completion_only_loss) == (False, False, False)


def test_prompt_completion_data_trains_on_the_completion_unless_all(tokenizers):
    tok = tokenizers["gemma2"]
    assert loss_plan(tok, chat=False, loss_on="assistant").completion_only_loss is True
    assert loss_plan(tok, chat=False, loss_on="completion").completion_only_loss is True
    assert loss_plan(tok, chat=False, loss_on="all").completion_only_loss is False


def test_a_template_that_rewrites_earlier_turns_falls_back_to_trl_or_fails_misconfigured(tokenizers):
    """Qwen3's real template (TRL ships it, and a patched training copy) drops the empty reasoning
    block of earlier turns: TRL's own path is taken. The same shape unknown to TRL fails with what to change."""
    from trl.chat_template_utils import qwen3_chat_template

    tok = build_tokenizer(FAMILIES["qwen2"])
    tok.add_special_tokens({"additional_special_tokens": ["<think>", "</think>"]})
    tok.chat_template = qwen3_chat_template
    plan = loss_plan(tok, chat=True, loss_on="assistant", sample=[CHAT])
    assert (plan.pretokenize, plan.assistant_only_loss) == (False, True) and "TRL" in plan.note
    assert loss_plan(tok, chat=True, loss_on="completion", sample=[CHAT]).pretokenize  # the last turn is fine
    tok.chat_template = qwen3_chat_template.replace("<think>", "<reasoning>")  # not TRL's verbatim any more
    with pytest.raises(MisconfiguredError, match="training.lossOn: all"):
        loss_plan(tok, chat=True, loss_on="assistant", sample=[CHAT])


def test_trl_turns_the_masks_into_the_labels(tokenizers, tmp_path):
    """What SFTTrainer trains on: labels are the input ids where the mask is 1, -100 elsewhere."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from tests.families import build_model

    tok = tokenizers["mistral"]
    row = tokenize_chat(tok, CHAT, "assistant")
    args = SFTConfig(output_dir=str(tmp_path), max_length=128, packing=False, report_to=[], use_cpu=True,
                     completion_only_loss=False, assistant_only_loss=False)
    trainer = SFTTrainer(model=build_model(FAMILIES["mistral"], tok), args=args, processing_class=tok,
                         train_dataset=Dataset.from_list([row]))
    labels = next(iter(trainer.get_train_dataloader()))["labels"][0].tolist()
    assert labels == [t if m else -100 for t, m in zip(row["input_ids"], row["assistant_masks"], strict=True)]
