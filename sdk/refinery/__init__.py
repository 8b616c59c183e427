"""Refinery: train language models on Kubernetes, one TrainingPipeline resource per recipe.

    from refinery import Client, TrainingPipeline

This package is what the operator, the trainer and users share: the API models (`refinery.api`,
from which the CRD is generated), the pure decisions both sides make from them (`refinery.core`)
and the client that runs and watches pipelines on a cluster or locally (`refinery.client`, whose
Kubernetes client is imported only when a cluster `Client` is made).
"""

from .api import TrainingPipeline
from .client import Client

__all__ = ["Client", "TrainingPipeline"]
