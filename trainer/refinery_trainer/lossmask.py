"""Which tokens of an sft example the loss is computed on (`training.lossOn`), on any chat template.

    plan = loss_plan(tokenizer, chat=True, loss_on="assistant")
    rows = tokenize_chats(tokenizer, [row["messages"] for row in data], plan.loss_on)  # input_ids + assistant_masks
    spans = assistant_spans(tokenizer, messages)      # [(start, end), ...] character offsets in the rendering

Why not TRL's `assistant_only_loss=True` alone: TRL finds the assistant's tokens from
`{% generation %}` markers in the template, and for the templates it knows verbatim (Llama 3,
Qwen 2.5/3, Gemma, Phi-3 ... `trl.chat_template_utils.get_training_chat_template`) swaps in a
patched copy. Every other template — most fine-tunes on the hub, any edited template — fails with
`ValueError: The chat template is not training-compatible`.

So the spans are found by rendering: each conversation is rendered whole, and for each assistant
turn `i` once up to where the model starts to speak and once through what it said:

    before  = render(messages[:i], add_generation_prompt=True)   # "...<|im_start|>assistant\\n"
    through = render(messages[:i + 1])                           # "...<|im_start|>assistant\\nParis.<|im_end|>\\n"

The turn's span runs from the end of `before` to where `through` and the whole rendering part
(Phi-3's template closes a conversation with EOS, which a later turn replaces), cut back to a
token boundary, its trailing whitespace left out: the end-of-turn token is in (the model must
learn to stop), the separator before the next turn is not (no model emits it; generation stops
at the end-of-turn token). A token is in the loss when it lies inside a span, by its character
offsets in the whole rendering, tokenized as TRL tokenizes a conversation
(`add_special_tokens=False`: the template writes BOS itself). A span that does not hold the
message's content, or a `before` that is not a prefix of the whole, means the template rewrites
earlier turns once later ones follow (Qwen3 drops the reasoning of earlier turns): then TRL's own
path is used when it knows the template, else the stage fails as `Misconfigured` with what to
change. Templates with `{% generation %}` markers go the same way: rendering finds the same spans
(Refinery's own template: tests/trainer/test_stages.py).

`completion` is the last assistant turn only (the conversation's final answer); `all` is every
token, prompts and template included — TRL's plain path. On prompt/completion data `assistant`
and `completion` are the same: the completion.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .errors import MisconfiguredError

LossOn = Literal["assistant", "completion", "all"]


class NotPrefixPreserving(ValueError):
    """The template renders an earlier part of the conversation differently once later turns follow."""


@dataclass(frozen=True)
class LossPlan:
    """How the sft stage asks for its loss mask."""

    pretokenize: bool  # True: rows are tokenized here (input_ids + assistant_masks); False: TRL tokenizes
    assistant_only_loss: bool = False  # TRL's own path (generation markers, or a template TRL can patch)
    completion_only_loss: bool | None = None  # prompt/completion data: loss on the completion only
    loss_on: LossOn = "assistant"
    note: str | None = None  # said once in the stage's log when a fallback was taken


def loss_plan(tokenizer, chat: bool, loss_on: LossOn, sample: Sequence[dict] | None = None) -> LossPlan:
    """The loss mask the stage asks for; `sample`: a few conversations to check the template on."""
    if not chat:
        return LossPlan(pretokenize=False, completion_only_loss=loss_on != "all", loss_on=loss_on)
    if loss_on == "all":
        return LossPlan(pretokenize=False, completion_only_loss=False, loss_on=loss_on)
    try:
        for messages in sample or ():
            assistant_spans(tokenizer, messages, last_only=loss_on == "completion")
    except NotPrefixPreserving as exc:
        if loss_on == "assistant" and trl_can_mask(tokenizer):
            return LossPlan(pretokenize=False, assistant_only_loss=True, completion_only_loss=False, loss_on=loss_on,
                            note=f"{exc}; using TRL's training template for this chat template instead")
        raise MisconfiguredError(
            f"training.lossOn {loss_on}: {exc}. Set training.lossOn: all (loss on every token) or "
            "training.lossOn: completion (the last assistant turn), or give the tokenizer a chat template whose "
            "assistant turns are wrapped in {% generation %} ... {% endgeneration %}") from None
    return LossPlan(pretokenize=True, loss_on=loss_on)


def trl_can_mask(tokenizer) -> bool:
    """TRL masks assistant turns itself: the template has generation markers, or TRL ships a patched copy."""
    from trl.chat_template_utils import get_training_chat_template

    try:
        get_training_chat_template(tokenizer)  # None: markers already there; a string: TRL's patched copy
    except ValueError:
        return False
    return True


def render(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as the chat template writes it; a template that refuses it (Gemma's and
    Mistral's raise on a system message) fails as Misconfigured, in its own words."""
    from jinja2.exceptions import TemplateError

    try:
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    except TemplateError as exc:
        roles = [m.get("role") for m in messages]
        raise MisconfiguredError(f"the chat template refuses a conversation with roles {roles}: {exc}. Change the data "
                                 "to what the template takes, or use a model whose template takes it") from None


def assistant_spans(tokenizer, messages: Sequence[dict], last_only: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """(the whole rendering, character spans of the assistant turns in it). Raises NotPrefixPreserving.

    A turn ends where its rendering and the whole one part (Phi-3's template closes a conversation
    with EOS, which a later turn replaces), so its span must still hold the message's content.
    """
    text = render(tokenizer, messages)
    turns = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    spans = []
    for i in turns[-1:] if last_only else turns:
        before = render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        if not text.startswith(before):
            raise NotPrefixPreserving(f"the chat template renders the conversation before turn {i} differently once "
                                      "later turns follow, so the assistant turns cannot be told apart by rendering")
        through = render(tokenizer, messages[: i + 1])
        end = len(os.path.commonprefix([through, text]))
        content = str(messages[i].get("content") or "").strip()
        if content not in text[len(before):end]:
            raise NotPrefixPreserving(f"the chat template renders assistant turn {i} differently once later turns "
                                      "follow, so the assistant turns cannot be told apart by rendering")
        spans.append((len(before), end))
    return text, spans


def tokenize_chat(tokenizer, messages: Sequence[dict], loss_on: LossOn) -> dict[str, list[int]]:
    """`input_ids` of the rendered conversation and `assistant_masks` (1: in the loss), as TRL reads them.

    Each span is cut back to a token boundary (where two renderings part inside a special token,
    `<|` of Phi-3's `<|endoftext|>` against `<|user|>`, that token is the next turn's), then its
    trailing whitespace is left out: the template's separator before the next turn, which no model
    emits (generation stops at the end-of-turn token). In the loss: the tokens inside what is left.
    """
    text, spans = assistant_spans(tokenizer, messages, last_only=loss_on == "completion")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [tuple(o) for o in encoded["offset_mapping"]]
    mask = [0] * len(offsets)
    for a, b in spans:
        b = min([start for start, end in offsets if start < b < end], default=b)
        stop = a + len(text[a:b].rstrip())
        for n, (start, end) in enumerate(offsets):
            if a <= start < stop and end <= b:
                mask[n] = 1
    return {"input_ids": list(encoded["input_ids"]), "assistant_masks": mask}


def tokenize_chats(tokenizer, conversations: Sequence[Sequence[dict]], loss_on: LossOn) -> list[dict[str, list[int]]]:
    """Every conversation tokenized with its mask; one that cannot be masked fails as Misconfigured, by row."""
    rows = []
    for number, messages in enumerate(conversations, start=1):
        try:
            rows.append(tokenize_chat(tokenizer, messages, loss_on))
        except NotPrefixPreserving as exc:
            raise MisconfiguredError(f"row {number}: {exc}. Set training.lossOn: all or completion") from None
    return rows
