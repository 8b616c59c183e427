"""What can go wrong when talking to a pipeline: one exception type per thing a caller acts on.

The CLI maps each to its own exit code (`refinery --help`, README "Python client and CLI").
"""

from __future__ import annotations


class ClientError(Exception):
    """Base of the client's errors; the message is one line a person can act on."""


class NotFound(ClientError):
    """No such pipeline (or stage) where the client looked: the namespace, or the local work folder."""


class Unreachable(ClientError):
    """No cluster to talk to: no kubeconfig, an unknown context, or an API server that does not answer."""


class NoLogs(ClientError):
    """The stage has no log to show: it has not started yet, or its attempt's pod is gone."""


class WaitTimeout(ClientError, TimeoutError):
    """`wait()` ran out of time before the pipeline reached the phase asked for."""


class PipelineFailed(ClientError):
    """`wait()` saw the pipeline end in another phase than the one asked for (Failed, usually).
    `pipeline` is the TrainingPipeline as last read."""

    def __init__(self, message: str, pipeline=None) -> None:
        super().__init__(message)
        self.pipeline = pipeline
