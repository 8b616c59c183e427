"""The planner tests' shared fixtures: a fixed clock, a pipeline root, and short-hands for attempts."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from refinery.core.plan import AttemptState, Observed, plan, rfc3339
from tests.builders import make_pipeline

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
ROOT = "/workspace/default/p"


def ok(stage_attempt: int = 1) -> list[AttemptState]:
    return [AttemptState(stage_attempt, "Succeeded")]


def run(pipeline, attempts=None, records=None, status=None):
    if status is not None:
        pipeline = pipeline.model_copy(update={"status": status})
    return plan(pipeline, Observed(attempts or {}, records or {}), ROOT, NOW)


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def stamp(seconds: float) -> str:
    return rfc3339(at(seconds))


def failed(attempt, seconds=0.0, infrastructure=False, reason=None, **kw):
    return AttemptState(attempt, "Failed", reason or ("Disrupted" if infrastructure else "TrainerError"), "it failed",
                        infrastructure=infrastructure, start_time=stamp(seconds - 100), completion_time=stamp(seconds), **kw)


def single(**stage):
    return make_pipeline().stage("pretrain", "pretrain", **stage).obj()
