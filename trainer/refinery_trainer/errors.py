"""Errors a stage raises on purpose: bad input or a failure with a known reason.

`refinery-train` turns a `StageError` into a `Failed` progress record carrying `reason` (a
CamelCase word the operator files under the *application* failure class) and its message, prints
the message on stderr without a traceback, and exits 1. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

REASON_BAD_DATA = "BadData"
REASON_BAD_MODEL = "BadModel"
REASON_MISCONFIGURED = "Misconfigured"  # never retried: refinery.core.plan.NOT_RETRIED
REASON_NAN_LOSS = "NanLoss"
REASON_SOURCE_ERROR = "SourceError"
REASON_STAGE_FAILED = "StageFailed"
REASON_TERMINATED = "Terminated"


class StageError(Exception):
    """A stage cannot go on, for a reason a user can act on."""

    reason = REASON_STAGE_FAILED

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self)


class DataError(StageError):
    """The dataset is missing or malformed; the message names the file, line and field."""

    reason = REASON_BAD_DATA


class ModelError(StageError):
    """The initial model or tokenizer is missing or cannot be loaded."""

    reason = REASON_BAD_MODEL


class MisconfiguredError(StageError):
    """The stage's settings do not fit its model, tokenizer or data (no chat template for `messages`
    data, `seqLen` beyond the model's positions, LoRA target modules the model lacks ...).

    Deterministic: a retry would fail the same way, so the operator does not spend a retry on it.
    The message says which setting to change.
    """

    reason = REASON_MISCONFIGURED


class NanLossError(StageError):
    """The training loss became NaN or infinite."""

    reason = REASON_NAN_LOSS


class TerminatedError(StageError):
    """SIGTERM (eviction, preemption, a stopped local run): a checkpoint was saved, then training stopped."""

    reason = REASON_TERMINATED


class SourceError(StageError):
    """A model or data source cannot be fetched or read; the message names the URI, never a credential.

    `transient` (a 5xx, a timeout, a refused connection) means trying again may work: the
    pipeline retries it as an infrastructure failure. Otherwise (403, 404, a bad revision, a
    changed or partial download) it is the user's to fix: an application failure.
    """

    reason = REASON_SOURCE_ERROR

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient
