"""Shared base of the API models: camelCase aliases, strict fields, the stage types."""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

GROUP = "refinery.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TrainingPipeline"
PLURAL = "trainingpipelines"
SINGULAR = "trainingpipeline"
SHORT_NAMES = ["tp"]

MAX_STAGES = 16
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
STAGE_NAME_MAX = 40  # leaves room for "<pipeline>-<stage>-<attempt>" Job names and suffixes


class ApiModel(BaseModel):
    """Base: camelCase aliases, unknown fields rejected (like `kubectl apply` strict validation)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
    )

    def dump(self) -> dict:
        """The object as it appears in YAML: camelCase keys, unset optional fields omitted."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StageType(StrEnum):
    pretrain = "pretrain"
    sft = "sft"
    reward = "reward"
    rlhf = "rlhf"
    dpo = "dpo"
    eval = "eval"  # scores other stages' models; never trains (api/evaluation.py)
    export = "export"  # spec.export's own step, after every stage; not written in stages[]


def is_dns_label(value: str) -> bool:
    return bool(re.match(DNS_LABEL, value)) and len(value) <= 63
