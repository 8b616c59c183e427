"""The TrainingPipeline resource: pydantic models and the CRD generated from them."""

from .run import ProgressRecord, StageRun
from .v1alpha1 import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    PipelineSpec,
    PipelineStatus,
    Stage,
    StageStatus,
    StageType,
    TrainingPipeline,
)

__all__ = [
    "API_VERSION", "GROUP", "KIND", "PLURAL", "PipelineSpec", "PipelineStatus", "ProgressRecord",
    "Stage", "StageRun", "StageStatus", "StageType", "TrainingPipeline",
]
