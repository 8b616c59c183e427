"""The files of an exported model: its weights as safetensors, config, tokenizer with its chat
template, and the model card — gathered into one folder before they are published.

    files = write_bundle(model_dir, out_dir, card_text)   # [Path, ...] relative to out_dir

The weights are copied as the stage saved them (save_pretrained writes safetensors); a folder
without `*.safetensors` (a `.bin` checkpoint) is re-saved as safetensors. The tokenizer is loaded
and saved again so its chat template is written even when the stage's folder lacked one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import ModelError

CARD = "README.md"
# What save_pretrained writes for a model; tokenizer files are written by the tokenizer itself.
MODEL_FILES = ("config.json", "generation_config.json")


def check_complete(model_dir: Path) -> None:
    """A model folder that can be loaded: config, weights and a tokenizer. Raises ModelError."""
    missing = []
    if not (model_dir / "config.json").is_file():
        missing.append("config.json")
    if not any(model_dir.glob("*.safetensors")) and not any(model_dir.glob("*.bin")):
        missing.append("weights (*.safetensors)")
    if not (model_dir / "tokenizer_config.json").is_file():
        missing.append("tokenizer (tokenizer_config.json)")
    if missing:
        raise ModelError(f"{model_dir} is not a complete model folder: no {', '.join(missing)}")


def write_bundle(model_dir: Path, out: Path, card: str) -> list[Path]:
    from ..tokenizer import load_tokenizer

    check_complete(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.safetensors.index.json"))
    if weights:
        for path in [*weights, *(model_dir / f for f in MODEL_FILES)]:
            if path.is_file():
                shutil.copy2(path, out / path.name)
    else:
        from ..modeling import load_model

        load_model(model_dir).save_pretrained(out)  # safetensors by default
    load_tokenizer(model_dir).save_pretrained(out)  # tokenizer.json, its config and chat_template.jinja
    (out / CARD).write_text(card)
    return sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
