"""Preflight of each stage's model: what the stage will need of its model's config and tokenizer,
checked before any stage trains — from `config.json` and the tokenizer files, never the weights
(the architecture is built on PyTorch's `meta` device, which allocates nothing, to list its modules).

    lines = check_models(stages, data_root, fetched)   # raises MisconfiguredError / ModelError

A stage is checked against the model it starts from: its own `model.path`/`model.hubId`, or, for a
stage that starts from another's output (`from`), the model at the root of that chain — the same
architecture and tokenizer, since stages save both with their model. A chain rooted in a `config`
(a model pretrain builds) has a tokenizer Refinery trains with a template and a pad token, so only
`seqLen` is checked there. What is checked, each failing as `Misconfigured` (not retried) with the
setting to change:

- `messages` data: the tokenizer has a chat template, it renders the first conversations, and the
  loss mask of `training.lossOn` can be found on them (refinery_trainer.lossmask).
- a pad token: the tokenizer's own, or its EOS/UNK (what load_tokenizer sets; said in the log).
- `training.seqLen` within the model's positions (`max_position_embeddings`, GPT-2's `n_positions`).
- `training.lora.targetModules`: each names a module of the architecture.
- reward stages: the architecture has a sequence-classification class whose head is `score`
  (what LoRA trains in full: refinery_trainer.lora.REWARD_HEAD).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from refinery.api.sources import hub_uri

from ..errors import MisconfiguredError, ModelError
from ..lora import REWARD_HEAD

TRAINED = ("pretrain", "sft", "reward", "dpo", "rlhf")  # stages that train a model (eval and export do not)
SAMPLE_ROWS = 16  # conversations the chat template is tried on


@dataclass(frozen=True)
class RootModel:
    stage: str  # the stage that names it
    folder: Path | None  # a saved model; None: built from `config`
    tokenizer: Path | None
    positions: int | None  # max_position_embeddings of a `config`


def check_models(stages, data_root: str, fetched: Mapping[str, str]) -> list[str]:
    """Every training stage against its root model; one line per stage of what was found."""
    from .preflight import local_path

    by_name = {s.name: s for s in stages}
    configs: dict[Path, object] = {}
    lines = []
    for stage in stages:
        if stage.type not in TRAINED:
            continue
        root = root_model(stage, by_name, lambda uri: local_path(uri, data_root, fetched))
        if root is None:
            continue
        if root.folder is None:
            check_seq_len(stage, root.positions, f"model.config of stage {root.stage!r}")
            continue
        if root.folder not in configs:
            configs[root.folder] = load_config(root.folder)
        lines.append(check_stage(stage, root, configs[root.folder], data_root, fetched))
    return lines


def root_model(stage, by_name: Mapping, resolve) -> RootModel | None:
    """The model at the root of the stage's `from` chain (None: a chain the planner refuses anyway)."""
    seen, current = set(), stage
    while current.model is None and current.from_ in by_name and current.name not in seen:
        seen.add(current.name)
        current = by_name[current.from_]
    source = current.model
    if source is None:
        return None
    if source.config is not None:
        return RootModel(current.name, None, None, source.config.max_position_embeddings)
    folder = resolve(source.path or hub_uri(source.hub_id))
    tokenizer = resolve(source.tokenizer) if source.tokenizer else folder
    return RootModel(current.name, folder, tokenizer, None)


def load_config(folder: Path):
    from transformers import AutoConfig

    from ..lora import adapter_base, is_adapter_folder

    try:
        return AutoConfig.from_pretrained(str(adapter_base(folder) if is_adapter_folder(folder) else folder))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the model config in {folder}: {exc}") from None


def check_stage(stage, root: RootModel, config, data_root: str, fetched: Mapping[str, str]) -> str:
    where = f"stage {stage.name!r}"
    positions = getattr(config, "max_position_embeddings", None)
    check_seq_len(stage, positions, f"{root.folder} ({config.model_type})")
    tokenizer = load_raw_tokenizer(root.tokenizer)
    pad = pad_token_summary(stage, tokenizer)
    if stage.training.lora is not None and stage.training.lora.target_modules:
        check_lora_targets(stage, config, task="reward" if stage.type == "reward" else "causal")
    if stage.type == "reward":
        check_reward_head(stage, config)
    chat = ""
    if stage.type == "sft":
        chat = check_chat(stage, tokenizer, data_root, fetched)
    elif stage.type in ("reward", "dpo"):
        chat = check_chat_pairs(stage, tokenizer, data_root, fetched)
    return f"{where} model {config.model_type} from {root.folder}: {positions} positions, {pad}{chat}"


def check_seq_len(stage, positions: int | None, what: str) -> None:
    if positions and stage.training.seq_len > positions:
        raise MisconfiguredError(
            f"stage {stage.name!r}: training.seqLen {stage.training.seq_len} is more than the {positions} positions of "
            f"its model ({what}): set training.seqLen to at most {positions}")


def load_raw_tokenizer(path: Path):
    """The tokenizer as saved (no pad token added), to say what the stage will have to set."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a tokenizer from {path}: {exc}") from None


def pad_token_summary(stage, tokenizer) -> str:
    if tokenizer.pad_token is not None:
        return f"pad token {tokenizer.pad_token!r}"
    stand_in = tokenizer.eos_token or tokenizer.unk_token
    if stand_in is None:
        raise MisconfiguredError(
            f"stage {stage.name!r}: the tokenizer has no pad token, and no EOS or UNK token to pad with: add a "
            "pad_token to its tokenizer_config.json (or give model.tokenizer one that has it)")
    return f"no pad token of its own: {stand_in!r} (its {'EOS' if tokenizer.eos_token else 'UNK'}) pads"


def meta_model(config, task: str):
    """The architecture without weights (PyTorch's meta device), to read its module names."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if task == "reward" else AutoModelForCausalLM
    if task == "reward":
        config = copy.deepcopy(config)
        config.num_labels = 1  # the reward stage's one-output head
    with torch.device("meta"):
        return auto.from_config(config)


def check_lora_targets(stage, config, task: str) -> None:
    names = [name for name, _ in meta_model(config, task).named_modules() if name]
    missing = [t for t in stage.training.lora.target_modules
               if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in meta_model(config, task).named_modules()
                         if type(m).__name__ in ("Linear", "Conv1D")} - {"lm_head", REWARD_HEAD})
        raise MisconfiguredError(
            f"stage {stage.name!r}: training.lora.targetModules {missing} are not modules of {config.model_type}; its "
            f"linear layers are {linear}: name some of those, or leave targetModules unset (every linear layer)")


def check_reward_head(stage, config) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES as HEADS

    if config.model_type not in HEADS:
        raise MisconfiguredError(
            f"stage {stage.name!r}: transformers has no sequence-classification head for {config.model_type}, which a "
            "reward stage trains: start the reward stage from a model of another family")
    if stage.training.lora is not None and not hasattr(meta_model(config, "reward"), REWARD_HEAD):
        raise MisconfiguredError(
            f"stage {stage.name!r}: {HEADS[config.model_type]} names its head otherwise than {REWARD_HEAD!r}, which LoRA "
            "trains in full: train the reward stage without training.lora")


def check_chat_pairs(stage, tokenizer, data_root: str, fetched: Mapping[str, str]) -> str:
    """Conversational preference pairs (chosen/rejected as messages) need a chat template to render them."""
    from ..data import is_chat_pairs
    from .files import data_files
    from .preflight import head, local_path

    files = list(data_files(local_path(stage.data.paths[0], data_root, fetched)))
    if not files or not is_chat_pairs(stage.data, head(files[0], stage.data.text_field)):
        return ""
    if not getattr(tokenizer, "chat_template", None):
        raise MisconfiguredError(
            f"stage {stage.name!r}: data {stage.data.paths[0]} holds conversational pairs (chosen/rejected as messages), "
            "and the tokenizer has no chat template to render them: use text pairs, or a model (or model.tokenizer) "
            "whose tokenizer_config.json has a chat_template")
    return ", conversational pairs: rendered with the chat template"


def check_chat(stage, tokenizer, data_root: str, fetched: Mapping[str, str]) -> str:
    """For `messages` data: the template exists and masks the first conversations (", chat ..." or "")."""
    from ..lossmask import loss_plan
    from .files import data_files
    from .preflight import head, local_path

    files = list(data_files(local_path(stage.data.paths[0], data_root, fetched)))  # a mixture's datasets share columns
    table = head(files[0], stage.data.text_field) if files else None
    if table is None or not table.has_column(stage.data.messages_field):
        return ""
    if not getattr(tokenizer, "chat_template", None):
        raise MisconfiguredError(
            f"stage {stage.name!r}: data {stage.data.paths[0]} is `messages` (chat) data, and the tokenizer has no chat "
            "template to render it: use prompt/completion data (data.promptField/data.completionField), or a model "
            "(or model.tokenizer) whose tokenizer_config.json has a chat_template")
    sample = [row[stage.data.messages_field] for row in table.rows[:SAMPLE_ROWS]]
    try:
        plan = loss_plan(tokenizer, True, stage.training.loss_on, sample)
    except MisconfiguredError as exc:
        raise MisconfiguredError(f"stage {stage.name!r}: {exc}") from None
    how = "TRL's training template" if plan.assistant_only_loss else "rendered prefixes" if plan.pretokenize else "TRL"
    return f", chat template: loss on {plan.loss_on} ({how})"
