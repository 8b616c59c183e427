"""What a stage starts from and trains on (refinery.dev/v1alpha1): its model (`model:`, a config
or a model from the volume, the hub or S3) and its data (`data:`: one dataset or a weighted
mixture, the fields TRL reads, and a pretraining corpus's tokenize step). Re-exported from
`v1alpha1`, where the resource's names live."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .base import ApiModel
from .sources import checked_source, hub_uri


class ModelConfig(ApiModel):
    """A model built from scratch (pretraining). Sizes follow transformers' LlamaConfig."""

    architecture: Literal["llama"] = Field("llama", description="Model family; `llama` (LlamaForCausalLM).")
    hidden_size: int = Field(64, ge=8, le=65536, description="Width of the residual stream.")
    num_hidden_layers: int = Field(2, ge=1, le=512, description="Number of transformer blocks.")
    num_attention_heads: int = Field(4, ge=1, le=1024, description="Attention heads per block.")
    num_key_value_heads: int | None = Field(
        None, ge=1, le=1024, description="Key/value heads (grouped-query attention); default: all heads."
    )
    intermediate_size: int = Field(256, ge=8, le=262144, description="Width of the MLP.")
    max_position_embeddings: int = Field(256, ge=16, le=1048576, description="Longest sequence the model supports, in tokens.")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hiddenSize must be a multiple of numAttentionHeads")
        return self


class ModelSource(ApiModel):
    """Where a stage's initial model comes from when it does not start from another stage."""

    config: ModelConfig | None = Field(None, description="Build a fresh model from this configuration (random weights).")
    path: str | None = Field(
        None, max_length=1024,
        description="A model saved with save_pretrained: a path on the volume (relative to /workspace), or a source "
        "URI fetched once per pipeline: hf://<org>/<name>[@<revision>], s3://<bucket>/<prefix>/, https://….",
    )
    hub_id: str | None = Field(
        None, max_length=256, description="A model id on the Hugging Face Hub, downloaded by the stage pod."
    )
    tokenizer: str | None = Field(
        None,
        max_length=1024,
        description="A tokenizer path on the volume, a hub id, or a source URI (hf://, s3://, https://). Default: the "
        "model's own; with `config`, a BPE tokenizer is trained on the stage's corpus.",
    )
    vocab_size: int = Field(
        512, ge=64, le=1048576, description="Vocabulary size of a tokenizer trained on the corpus (with `config`)."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        given = [k for k in ("config", "path", "hub_id") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of config, path, hubId")
        return self

    @field_validator("path", "tokenizer")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        return checked_source(value)

    @field_validator("hub_id")
    @classmethod
    def _hub_id(cls, value: str | None) -> str | None:
        return value if value is None else checked_source(hub_uri(value)) and value


MAX_MIXTURE = 16  # datasets in one `data.mixture`: bounds the CEL rules' cost and the lineage's length
PRETRAIN_MIXTURE_MESSAGE = ("`data.mixture` is for sft, reward, dpo and rlhf stages: a pretrain corpus is one `data.path` "
                            "(a folder of shards is streamed)")
MIXTURE_MESSAGE = "set exactly one of data.path (one dataset) or data.mixture (several, weighted)"


class MixtureEntry(ApiModel):
    """One dataset of a weighted mixture."""

    path: str = Field(
        ..., min_length=1, max_length=1024,
        description="A dataset as `data.path` takes it: a path on the volume, or hf://, s3://, https:// (fetched once).",
    )
    weight: float = Field(
        ..., gt=0, le=1e6,
        description="Relative weight: the share of training rows drawn from this dataset is weight / sum of weights.",
    )

    @field_validator("path")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        return checked_source(value)


MAX_TOKENIZE_WORKERS = 256  # pods of a tokenize step (each its slice of the shards)
TOKENIZE_ONLY_PRETRAIN_MESSAGE = ("`data.tokenize` is only valid on pretrain stages: only a streamed pretraining "
                                  "corpus is tokenized ahead of its stage")


class TokenizeSpec(ApiModel):
    """The pretrain stage's streamed corpus tokenized before the stage, by several workers at once."""

    workers: int = Field(
        ..., ge=1, le=MAX_TOKENIZE_WORKERS,
        description="Workers tokenizing the corpus' shards in parallel, each its slice (shards balanced by size): "
        "pods of an Indexed Job on a cluster, processes in local mode. A retry skips the shards already "
        "complete. More workers than shards leaves the extra ones idle.",
    )
    cpu: str = Field("1", max_length=32, pattern=r"^[0-9]+(\.[0-9]+)?m?$", description="CPU request and limit of each worker pod.")
    memory: str = Field(
        "2Gi", max_length=32, pattern=r"^[0-9]+(\.[0-9]+)?([EPTGMK]i?)?$",
        description="Memory request and limit of each worker pod (one shard's token list is held at a time).",
    )


class DataSpec(ApiModel):
    """A dataset on the volume. Column names follow TRL's conventions."""

    path: str | None = Field(
        None,
        min_length=1,
        max_length=1024,
        description="Training data: a .txt file (pretrain: one document per blank-line-separated block), "
        ".jsonl/.json, .parquet or .csv. Relative paths are resolved against /workspace (local mode: the "
        "manifest's folder). Or a source URI fetched once per pipeline: "
        "hf://datasets/<org>/<name>[@<revision>]/<file or glob>, s3://<bucket>/<key, prefix/ or glob>, "
        "https://… (a prefix or glob: every .jsonl/.json/.parquet/.csv/.txt file of it, in name order). "
        "Exactly one of `path` or `mixture`.",
    )
    mixture: list[MixtureEntry] | None = Field(
        None, min_length=2, max_length=MAX_MIXTURE,
        description="Several datasets (sft, reward, dpo, rlhf) mixed by weight instead of `path`: training rows are "
        "drawn from each with probability weight / sum of weights (seeded by training.seed) until the first dataset "
        "runs out, so no row repeats. The held-out part is `evalFraction` of the mixture, or `evalPath`.",
    )
    eval_path: str | None = Field(
        None, max_length=1024, description="Held-out data in the same format. Default: `evalFraction` of `path`."
    )
    eval_fraction: float = Field(
        0.1, gt=0, lt=1, description="Share of `path` held out for evaluation when `evalPath` is not set."
    )
    text_field: str = Field("text", max_length=63, description="Column with raw text (pretrain).")
    tokenize: TokenizeSpec | None = Field(
        None,
        description="pretrain on a streamed corpus (a folder of shards, or one file over 64 MiB): tokenize it as a "
        "step of its own before the stage, with `workers` in parallel (an Indexed Job), instead of by the stage's "
        "rank 0 while the GPUs wait. The stage then reads the token files the step wrote.",
    )
    prompt_field: str = Field("prompt", max_length=63, description="Column with the prompt (sft, rlhf, dpo).")
    completion_field: str = Field("completion", max_length=63, description="Column with the response (sft).")
    messages_field: str = Field(
        "messages", max_length=63, description="Column with a chat as a list of {role, content} (sft), used when present."
    )
    chosen_field: str = Field("chosen", max_length=63, description="Column with the preferred response (reward, dpo).")
    rejected_field: str = Field("rejected", max_length=63, description="Column with the dispreferred response (reward, dpo).")
    reference_field: str = Field(
        "reference", max_length=63,
        description="Column with the reference answer (rlhf: what exactMatch, contains and numeric rewards check against; "
        "when present, held-out exact match is watched along the way).",
    )

    @field_validator("path", "eval_path")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        return checked_source(value)

    @model_validator(mode="after")
    def _path_or_mixture(self) -> DataSpec:
        if (self.path is None) == (self.mixture is None):
            raise ValueError(MIXTURE_MESSAGE)
        return self

    @property
    def paths(self) -> list[str]:
        """The training datasets: `path`, or the mixture's paths in order."""
        return [self.path] if self.path is not None else [m.path for m in self.mixture or []]
