"""Read TrainingPipeline manifests and explain why one is invalid, field by field."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from .v1alpha1 import TrainingPipeline


class InvalidManifest(ValueError):
    """A manifest that cannot run; `problems` name the field each one is about."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid TrainingPipeline:\n" + "\n".join(f"  - {p}" for p in problems))


def field_path(loc: tuple) -> str:
    """('spec', 'stages', 1, 'from') -> 'spec.stages[1].from'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith(("function-", "tagged-union")):
            out += f".{part}" if out else str(part)
    return out


def explain(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            message = "unknown field (misspelt?)"
        problems.append(f"{field_path(e['loc']) or '(top level)'}: {message}")
    return problems


def parse_pipeline(obj: object, source: str = "manifest") -> TrainingPipeline:
    if not isinstance(obj, dict):
        raise InvalidManifest(source, ["(top level): expected a mapping with apiVersion, kind, metadata, spec"])
    try:
        return TrainingPipeline.model_validate(obj)
    except ValidationError as err:
        raise InvalidManifest(source, explain(err)) from None


def load_pipelines(path: str | Path) -> list[TrainingPipeline]:
    """Every TrainingPipeline document in a YAML file (other kinds are skipped)."""
    path = Path(path)
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except FileNotFoundError:
        raise InvalidManifest(str(path), ["file not found"]) from None
    except yaml.YAMLError as err:
        raise InvalidManifest(str(path), [f"not valid YAML: {err}"]) from None
    pipelines = [
        parse_pipeline(d, f"{path} (document {i + 1})")
        for i, d in enumerate(docs)
        if not isinstance(d, dict) or d.get("kind", "TrainingPipeline") == "TrainingPipeline"
    ]
    if not pipelines:
        raise InvalidManifest(str(path), ["no TrainingPipeline in this file"])
    return pipelines
