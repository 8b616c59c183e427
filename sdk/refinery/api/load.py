"""Read TrainingPipeline manifests and explain why one is invalid, field by field."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from .admission import admission_problems
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
    """One line per problem, each starting with the field path it is about."""
    problems = []
    for e in err.errors():
        where = field_path(e["loc"])
        if e["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown field (misspelt?)")
            continue
        parent, _, last = where.rpartition(".")
        for message in e["msg"].removeprefix("Value error, ").split("; "):
            # Graph checks validate the whole list and name the item themselves ("stages[1].from: …").
            if last and message.startswith((f"{last}[", f"{last}:")):
                problems.append(f"{parent}.{message}" if parent else message)
            else:
                problems.append(f"{where or '(top level)'}: {message}")
    return problems


def parse_pipeline(obj: object, source: str = "manifest", admission: bool = True) -> TrainingPipeline:
    """The typed pipeline, or InvalidManifest listing every problem once, each with its field.

    With `admission`, the CRD's schema and CEL rules are applied first (what `kubectl apply`
    would refuse), then the models' semantic checks (what the operator would refuse)."""
    if not isinstance(obj, dict):
        raise InvalidManifest(source, ["(top level): expected a mapping with apiVersion, kind, metadata, spec"])
    problems = admission_problems(obj) if admission else []
    try:
        pipeline = TrainingPipeline.model_validate(obj)
    except ValidationError as err:
        problems += [p for p in explain(err) if p not in problems]
    if problems:
        raise InvalidManifest(source, problems)
    return pipeline


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
