"""Refinery: train language models on Kubernetes, one TrainingPipeline resource per recipe.

This package is what the operator, the trainer and users share: the API models (`refinery.api`,
from which the CRD is generated) and the pure decisions both sides make from them (`refinery.core`).
"""

from .api import TrainingPipeline

__all__ = ["TrainingPipeline"]
