"""`refinery.Client`: a cluster's pipelines or local mode's, through the same calls (client.py)."""

from .client import Client, PipelineEvent
from .errors import ClientError, NoLogs, NotFound, PipelineFailed, Unreachable, WaitTimeout

__all__ = ["Client", "ClientError", "NoLogs", "NotFound", "PipelineEvent", "PipelineFailed", "Unreachable", "WaitTimeout"]
