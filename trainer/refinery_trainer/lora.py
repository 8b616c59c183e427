"""LoRA (PEFT) for any stage: the adapter config from `training.lora`, and saving the result.

    config = lora_config(ctx.training.lora, task="causal")      # or "reward"; None without lora
    trainer = SFTTrainer(model=model, peft_config=config, ...)   # every TRL trainer takes peft_config
    model = apply_lora(model, ctx.training.lora, task="causal")  # an own training loop (e.g. PPO)
    save_lora_model(trainer.model, folder, spec, base=ctx.init_model_dir)   # via ctx.save_final

Final model (`lora.save`):
- `merged`: the adapters are folded into the base weights (`merge_and_unload`) and the plain
  model is saved: it loads with `from_pretrained` without peft, like any full fine-tune.
- `adapter`: only the adapter is saved (`adapter_config.json` + `adapter_model.safetensors`),
  its `base_model_name_or_path` pointing at the stage's init model. `modeling.load_model` merges
  it into its base on load, so the next stage (and `vllm --lora-modules`) can use it.

Reward models also train their new score head in full (`modules_to_save`): a LoRA on a randomly
initialised head would be rank-limited for no gain, and the head must be saved with the adapter.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from refinery.api.training import LoraSpec

if TYPE_CHECKING:
    from peft import LoraConfig

ADAPTER_CONFIG = "adapter_config.json"
Task = Literal["causal", "reward"]
_TASK_TYPES = {"causal": "CAUSAL_LM", "reward": "SEQ_CLS"}
REWARD_HEAD = "score"  # the head of *ForSequenceClassification in transformers' Llama, Qwen, Mistral …


def lora_config(spec: LoraSpec | None, task: Task = "causal") -> LoraConfig | None:
    """The peft LoraConfig of `training.lora` (None when the stage trains every weight)."""
    if spec is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        # "all-linear": every nn.Linear except the output layer (lm_head), as QLoRA does.
        target_modules=list(spec.target_modules) if spec.target_modules else "all-linear",
        modules_to_save=[REWARD_HEAD] if task == "reward" else None,
        task_type=_TASK_TYPES[task],
        bias="none",
    )


def apply_lora(model, spec: LoraSpec | None, task: Task = "causal"):
    """`model` wrapped with fresh adapters (a PeftModel), or unchanged without `training.lora`."""
    config = lora_config(spec, task)
    if config is None:
        return model
    from peft import get_peft_model

    return get_peft_model(model, config)


def is_lora_model(model) -> bool:
    if "peft" not in sys.modules:  # no PeftModel exists before peft is imported: do not pay for the import
        return False
    try:
        from peft import PeftModel
    except ImportError:  # peft is optional until a stage asks for LoRA
        return False
    return isinstance(model, PeftModel)


def save_lora_model(model, folder: str | Path, spec: LoraSpec | None, base: str | Path | None = None) -> None:
    """save_pretrained of a PeftModel as `spec.save` says: merged weights, or the adapter plus its base.

    `base` (the stage's init model) is recorded as the adapter's `base_model_name_or_path`.
    """
    folder = Path(folder)
    if spec is None or spec.save == "merged":
        merged = model.merge_and_unload()
        merged.save_pretrained(folder)
        return
    model.save_pretrained(folder)
    if base is not None:  # peft records the path the base was loaded from; make sure it is the init model's
        path = folder / ADAPTER_CONFIG
        config = json.loads(path.read_text())
        config["base_model_name_or_path"] = str(base)
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def is_adapter_folder(path: str | Path) -> bool:
    """A folder holding only a saved adapter (no full weights): loaded by merging into its base."""
    path = Path(path)
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def adapter_base(path: str | Path) -> str:
    """`base_model_name_or_path` of a saved adapter."""
    return json.loads((Path(path) / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]


def load_merged(path: str | Path, base_model):
    """The adapter saved in `path` folded into `base_model` (a plain transformers model again).

    The base may be another head than the adapter was trained with (a reward stage starting from
    an sft adapter loads it into a sequence classifier): the task-agnostic PeftModel loads and
    merges the shared layers, where the task's class would insist on the original head's methods.
    """
    from peft import PeftConfig, PeftModel

    config = PeftConfig.from_pretrained(str(path))
    config.task_type = None
    return PeftModel.from_pretrained(base_model, str(path), config=config).merge_and_unload()
