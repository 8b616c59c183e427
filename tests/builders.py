"""Small builders for test fixtures: `make_pipeline("p").stage("sft", "sft", from_="pt").obj()`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from refinery.api.v1alpha1 import TrainingPipeline

DATA_BY_TYPE = {
    "pretrain": "data/pretrain.txt",
    "sft": "data/sft.jsonl",
    "reward": "data/preferences.jsonl",
    "rlhf": "data/prompts.jsonl",
}


class PipelineBuilder:
    def __init__(self, name: str, namespace: str | None = "default") -> None:
        self._name = name
        self._namespace = namespace
        self._stages: list[dict[str, Any]] = []
        self._storage: dict[str, Any] = {"claimName": "training-data"}

    def stage(self, name: str, type_: str, *, from_: str | None = None, reward_model: str | None = None, **extra: Any) -> PipelineBuilder:
        stage: dict[str, Any] = {"name": name, "type": type_, "data": {"path": DATA_BY_TYPE[type_]}}
        if from_:
            stage["from"] = from_
        elif type_ == "pretrain" or "model" not in extra:
            stage["model"] = {"config": {"hiddenSize": 32, "numHiddenLayers": 1, "numAttentionHeads": 2, "intermediateSize": 64}}
        if reward_model:
            stage["rewardModel"] = reward_model
        stage.update(extra)
        self._stages.append(stage)
        return self

    def storage(self, **storage: Any) -> PipelineBuilder:
        self._storage = storage
        return self

    def manifest(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self._name}
        if self._namespace:
            meta["namespace"] = self._namespace
        return {
            "apiVersion": "refinery.dev/v1alpha1",
            "kind": "TrainingPipeline",
            "metadata": meta,
            "spec": {"storage": self._storage, "stages": self._stages},
        }

    def obj(self) -> TrainingPipeline:
        return TrainingPipeline.model_validate(self.manifest())


def make_pipeline(name: str = "p", namespace: str | None = "default") -> PipelineBuilder:
    return PipelineBuilder(name, namespace)


def chat_pipeline(name: str = "p") -> PipelineBuilder:
    """The classic recipe: pretrain -> sft -> reward -> rlhf."""
    return (
        make_pipeline(name)
        .stage("pretrain", "pretrain")
        .stage("sft", "sft", from_="pretrain")
        .stage("reward", "reward", from_="sft")
        .stage("rlhf", "rlhf", from_="sft", reward_model="reward")
    )


def catalog_expectation(path) -> tuple[str, str]:
    """(field path, message text) a manifest of tests/manifests/invalid/ must be rejected with,
    from its `# expect: <field> | <text>` header line."""
    line = next(l for l in path.read_text().splitlines() if l.startswith("# expect:"))
    field, _, text = line.removeprefix("# expect:").partition("|")
    return field.strip(), text.strip()


def tiny_chat_data_files() -> list[Path]:
    """The data files examples/tiny-chat.yaml reads (examples/data holds tiny-math's too)."""
    examples = Path(__file__).resolve().parents[1] / "examples"
    manifest = yaml.safe_load((examples / "tiny-chat.yaml").read_text())
    names = set()
    for stage in manifest["spec"]["stages"]:
        names |= {stage.get("data", {}).get(k) for k in ("path", "evalPath")}
        names.add(((stage.get("eval") or {}).get("generate") or {}).get("path"))
    return sorted(examples / name for name in names if name)
