"""A finished local run, read back from its folder: what `refinery export` and `refinery chat` need.

    run = FinishedRun.load(Path("runs/tiny-chat"))     # status.json + pipeline.json
    run.model_of("rlhf")                               # the stage's final model folder

`refinery run` writes both files into the pipeline's folder (`<workdir>/<pipeline>/`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from refinery.api.v1alpha1 import Phase, PipelineStatus, StageType, TrainingPipeline
from .runner import PIPELINE_FILE, STATUS_FILE

LANGUAGE_MODEL_TYPES = (StageType.pretrain, StageType.sft, StageType.rlhf, StageType.dpo)


class NotARun(Exception):
    """The folder is not a local run's pipeline folder, or the stage asked for has no model."""


@dataclass
class FinishedRun:
    root: Path
    pipeline: TrainingPipeline
    status: PipelineStatus
    data_root: Path

    @classmethod
    def load(cls, root: Path) -> FinishedRun:
        try:
            status = PipelineStatus.model_validate_json((root / STATUS_FILE).read_text())
        except FileNotFoundError:
            raise NotARun(f"{root} holds no {STATUS_FILE}: pass a local run's pipeline folder (e.g. runs/tiny-chat)") from None
        try:
            saved = json.loads((root / PIPELINE_FILE).read_text())
        except FileNotFoundError:
            raise NotARun(f"{root} holds no {PIPELINE_FILE} (written by `refinery run` since this version): run the "
                          "pipeline again to record it") from None
        return cls(root, TrainingPipeline.model_validate(saved["pipeline"]), status, Path(saved["dataRoot"]))

    def outputs(self) -> dict[str, str]:
        """Every succeeded stage's output (its model folder; an eval stage's eval.json)."""
        return {s.name: s.output for s in self.status.stages if s.phase == Phase.succeeded and s.output}

    def default_stage(self) -> str:
        """The exported stage when there is one, else the last language-model stage of the spec."""
        spec = self.pipeline.spec
        if spec.export is not None:
            return spec.export.stage
        names = [s.name for s in spec.stages if s.type in LANGUAGE_MODEL_TYPES]
        if not names:
            raise NotARun(f"pipeline {self.pipeline.metadata.name!r} has no language-model stage")
        return names[-1]

    def model_of(self, stage: str) -> Path:
        spec_stage = next((s for s in self.pipeline.spec.stages if s.name == stage), None)
        if spec_stage is None:
            known = ", ".join(s.name for s in self.pipeline.spec.stages)
            raise NotARun(f"pipeline {self.pipeline.metadata.name!r} has no stage {stage!r} (stages: {known})")
        if spec_stage.type not in LANGUAGE_MODEL_TYPES:
            raise NotARun(f"stage {stage!r} is a {spec_stage.type} stage, not a language model")
        output = self.outputs().get(stage)
        if output is None:
            current = self.status.stage(stage)
            phase = current.phase if current is not None else "Pending"
            raise NotARun(f"stage {stage!r} has not succeeded (phase {phase}): no final model yet")
        return Path(output)

    def trained_on_chats(self, stage: str) -> bool:
        """Whether any stage behind `stage` trained on chats (`messages`), as its first data row says."""
        by_name = {s.name: s for s in self.pipeline.spec.stages}
        todo, seen = [stage], set()
        while todo:
            current = by_name.get(todo.pop())
            if current is None or current.name in seen:
                continue
            seen.add(current.name)
            todo += [n for n in (current.from_,) if n]
            if current.data is not None and any(_first_row_has(self.data_root / p, current.data.messages_field)
                                                for p in current.data.paths):
                return True
        return False


def _first_row_has(path: Path, field: str) -> bool:
    if path.suffix != ".jsonl" or not path.is_file():
        return False
    with open(path, encoding="utf-8") as f:
        line = f.readline()
    try:
        return field in json.loads(line)
    except ValueError:
        return False
