"""The TrainingPipeline resource: pydantic models and the CRD generated from them.

The models a pipeline is built from in Python (snake_case here, camelCase in YAML):

    TrainingPipeline(metadata={"name": "p"}, spec=PipelineSpec(storage=Storage(claim=ClaimTemplate(size="1Gi")),
        stages=[Stage(name="pretrain", type="pretrain", model=ModelSource(config=ModelConfig(...)),
                      data=DataSpec(path="data/pretrain.txt"), training=TrainingSpec(max_steps=100))]))
"""

from .run import ProgressRecord, StageRun
from .v1alpha1 import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    ClaimTemplate,
    DataSpec,
    EvalSpec,
    ExportSpec,
    ModelConfig,
    ModelSource,
    PipelineSpec,
    PipelineStatus,
    Resources,
    RlSpec,
    Stage,
    StageStatus,
    StageType,
    Storage,
    TrainingPipeline,
    TrainingSpec,
)

__all__ = [
    "API_VERSION", "GROUP", "KIND", "PLURAL", "ClaimTemplate", "DataSpec", "EvalSpec", "ExportSpec", "ModelConfig",
    "ModelSource", "PipelineSpec", "PipelineStatus", "ProgressRecord", "Resources", "RlSpec", "Stage", "StageRun",
    "StageStatus", "StageType", "Storage", "TrainingPipeline", "TrainingSpec",
]
