"""Models: build a fresh Llama from a `ModelConfig`, or load one saved with save_pretrained.

    model = build_model(ModelConfig(hidden_size=64), tokenizer, seed=0)
    model = load_model("/workspace/ns/p/pretrain/model")
    model = load_model("/workspace/ns/p/sft/model")   # a LoRA adapter folder: merged into its base on load
"""

from __future__ import annotations

import logging
from pathlib import Path

from refinery.api.v1alpha1 import ModelConfig

from .errors import ModelError

log = logging.getLogger(__name__)


def build_model(config: ModelConfig, tokenizer, seed: int = 0, attn_implementation: str | None = None):
    """A randomly initialised LlamaForCausalLM sized by `config`, its vocabulary the tokenizer's
    (`attn_implementation`: as `from_pretrained` takes it; None: transformers' default, sdpa)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads or config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # Untied, like Llama 2/3: with tied weights every resume warns "missing keys ['lm_head.weight']"
        # (Trainer._issue_warnings_after_load checks _keys_to_ignore_on_save, not the tied keys).
        tie_word_embeddings=False,
        attn_implementation=attn_implementation,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(llama)


def load_model(path_or_id: str | Path, model_class=None, **kwargs):
    """`model_class.from_pretrained(path)` (default AutoModelForCausalLM) in float32 on CPU-friendly
    settings; a folder or hub id that cannot be loaded raises ModelError.

    A folder with only a LoRA adapter (a stage saved with `lora.save: adapter`) loads its base
    (`base_model_name_or_path`, itself loaded by this function) and merges the adapter into it.
    """
    import torch

    from .lora import adapter_base, is_adapter_folder, load_merged

    if model_class is None:
        from transformers import AutoModelForCausalLM as model_class
    if is_adapter_folder(path_or_id):
        base = load_model(adapter_base(path_or_id), model_class, **kwargs)
        try:
            return load_merged(path_or_id, base)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"cannot load the LoRA adapter in {path_or_id}: {exc}") from None
    kwargs.setdefault("dtype", torch.float32)
    try:
        return model_class.from_pretrained(str(path_or_id), **kwargs)
    except ValueError as exc:
        # Architectures without an sdpa path (Gemma 2: its attention logit soft-capping) refuse
        # `attn_implementation="sdpa"`, the default of `training.attention: auto` on a CPU or without
        # flash-attn; they get transformers' eager attention instead
        # (https://github.com/huggingface/transformers/issues/28005).
        if kwargs.get("attn_implementation") != "sdpa" or "scaled_dot_product_attention" not in str(exc):
            raise ModelError(f"cannot load a model from {path_or_id}: {exc}") from None
        log.warning("%s: the architecture has no sdpa attention; loading it with eager attention", path_or_id)
        return load_model(path_or_id, model_class, **{**kwargs, "attn_implementation": "eager"})
    except OSError as exc:
        raise ModelError(f"cannot load a model from {path_or_id}: {exc}") from None
