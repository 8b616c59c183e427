"""GPU-time accounting and restart counts of a stage, from its observed attempts (pure).

- `gpuSeconds`: GPUs of one attempt (gpus per node x nodes) x the wall-clock time of every
  attempt: finished ones from the Job's start to its end; a running one up to the latest
  progress report it wrote (not "now", so a reconcile that observes nothing new changes nothing).
  Kept as a running maximum, so deleted Jobs do not make it shrink. Kubernetes restarts a Job's
  `startTime` when it is resumed after a suspend, so the operator writes the time the pods ran
  until the suspension onto the Job (`AttemptState.held_seconds`) and counts it on top; while a
  Job is suspended only that is counted. With Kueue (`queueName`) our suspension deletes the Job
  and a preemption suspends it without us: the time before either survives only in the running
  maximum — an underestimate, never double counting.
- `lostGpuSeconds`: for each failure, when it is first seen, the GPUs x the time from the newest
  checkpoint (or the attempt's start, if later) to the failure: the work the retry redoes.
- `restartsByClass`: failed attempts that were followed by another attempt, by class.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from ..api.run import ProgressRecord
from ..api.v1alpha1 import RestartCounts, Stage, StageStatus


def parse_time(stamp: str | None) -> datetime | None:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None


def seconds_between(start: str | None, end: str | None) -> float:
    a, b = parse_time(start), parse_time(end)
    return max(0.0, (b - a).total_seconds()) if a and b else 0.0


def gpus_of(stage: Stage) -> int:
    return stage.resources.gpus * stage.resources.nodes


def gpu_seconds(stage: Stage, attempts: Sequence, record: ProgressRecord | None) -> float:
    total = 0.0
    for a in attempts:
        total += a.held_seconds
        if a.phase in ("Succeeded", "Failed"):
            total += seconds_between(a.start_time, a.completion_time)
        elif not a.suspended and record is not None and record.attempt == a.attempt:
            total += seconds_between(a.start_time, record.update_time)
    return round(gpus_of(stage) * total, 3)


def lost_gpu_seconds(stage: Stage, failed, status: StageStatus) -> float:
    """GPU-seconds the failure `failed` throws away (work since the newest checkpoint)."""
    checkpoint = status.last_checkpoint.time if status.last_checkpoint else None
    since = max((t for t in (parse_time(failed.start_time), parse_time(checkpoint)) if t), default=None)
    end = parse_time(failed.completion_time)
    if since is None or end is None:
        return 0.0
    return round(gpus_of(stage) * max(0.0, (end - since).total_seconds()), 3)


def restart_counts(attempts: Sequence, final_failure: int | None, previous: RestartCounts) -> RestartCounts:
    """Failed attempts retried, by class; `final_failure` is the attempt that was not retried."""
    counts = {"application": 0, "infrastructure": 0, "disruption": 0}
    for a in attempts:
        if a.phase == "Failed" and not a.superseded and a.attempt != final_failure:
            counts["infrastructure" if a.infrastructure else "disruption" if a.disruption else "application"] += 1
    return RestartCounts(**{k: max(v, getattr(previous, k)) for k, v in counts.items()})
