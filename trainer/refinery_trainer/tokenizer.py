"""Tokenizers: train a byte-level BPE on a stage's corpus, or load a saved one.

A model built from a `config` has no tokenizer of its own, so pretrain trains one on its corpus
(`ModelSource.vocabSize` tokens, seconds on a small corpus) and saves it with the model; every
later stage loads it from the previous stage's `model/` folder.

    tok = train_bpe_tokenizer(texts, vocab_size=512)
    tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .errors import ModelError

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]

# One role marker token per turn, each turn closed by EOS. The `generation` block marks what the
# assistant wrote, so TRL can restrict the loss to it (`assistant_only_loss=True`) if asked.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>\n{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}\n"
    "{% else %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """A byte-level BPE (GPT-2 style: every byte is a token, so nothing is ever unknown)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = [PAD, BOS, EOS, UNK, *ROLE_TOKENS]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(core)


def wrap_tokenizer(core):
    """A `tokenizers.Tokenizer` as a transformers fast tokenizer with our special tokens and template."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=ROLE_TOKENS,
        model_max_length=1_000_000,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def load_tokenizer(path_or_id: str | Path):
    """A saved tokenizer (folder or hub id), made usable for training: a pad token set when it has none
    (its EOS, else UNK: what `pad_token_summary` reports in preflight).

    A tokenizer without a chat template keeps having none: a made-up template would teach a hub
    model role markers its family never uses. `messages` data then fails in preflight as
    `Misconfigured` (refinery_trainer.sources.model_checks); prompt/completion data needs none.
    """
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path_or_id))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a tokenizer from {path_or_id}: {exc}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok
