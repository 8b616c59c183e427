"""A pretrain stage's tokenize step (`data.tokenize.workers`): its streamed corpus tokenized by N
workers in parallel before the stage starts, so the GPUs do not wait while one process tokenizes.

On a cluster the step is an Indexed Job (`completions = parallelism = workers`), each pod running
`refinery-train tokenize --index $JOB_COMPLETION_INDEX --of N` on the stage's own StageRun
(builders_tokenize.py); in local mode, N processes doing the same slices. Pure decisions here,
called by plan() where the stage would start:

- the step runs once per run of the stage (a re-run gets a new one), after the inputs check (the
  shards must be fetched first) and before the stage's first attempt; the stage's retries do not
  run it again, and the stage finds every shard complete;
- a failed attempt of the step is retried as a new Job while the failure's class has budget left
  (the stage's `retries`: application, infrastructure, disruption), after the stage's back-off,
  and only when no pod of the failed one remains (two workers never write one shard); the retry
  skips the shards already complete, so it redoes only what the failed attempt had not finished;
- with no budget left the stage fails with reason `TokenizeFailed` and the worker's message.

`status.stages[].tokenize` shows the step: its phase, attempt, Job, workers done, retries and
last failure; the stage's `message` says what the stage waits for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ..api.v1alpha1 import Failure, Phase, Stage, StageStatus, StageType
from ..api.status import TokenizeStatus
from .accounting import parse_time
from .conditions import rfc3339
from .naming import JOB_NAME_MAX, dns_name

if TYPE_CHECKING:
    from .plan import AttemptState, Launch

REASON_TOKENIZE_FAILED = "TokenizeFailed"


@dataclass(frozen=True)
class TokenizeAttempt:
    """What the backend observes of one attempt of a stage's tokenize step (a Job, or local processes)."""

    run: int  # the stage's run it tokenizes for (StageStatus.run)
    state: AttemptState
    completed: int = 0  # workers that finished their slice


@dataclass(frozen=True)
class TokenizeLaunch:
    attempt: int  # the step's attempt: its Job
    workers: int
    stage_launch: Launch  # the stage attempt it prepares: the StageRun (paths, inputs) the workers read


def needs_tokenize_step(stage: Stage) -> bool:
    return stage.type == StageType.pretrain and stage.data is not None and stage.data.tokenize is not None


def tokenize_job_name(pipeline: str, stage: str, run: int, attempt: int) -> str:
    # JOB_NAME_MAX: the Job controller names the pods `<job>-<index>-<suffix>`
    return dns_name(pipeline, stage, "tokenize", run, attempt, limit=JOB_NAME_MAX)


@dataclass(frozen=True)
class TokensGate:
    status: StageStatus  # the stage's status, its step shown
    launch: TokenizeLaunch | None = None  # the step attempt to start now
    ready: bool = False  # every shard is tokenized: the stage may start
    wait_s: float | None = None  # seconds until a retry's back-off ends


def tokens_gate(pipeline: str, stage: Stage, status: StageStatus, attempts: Sequence[TokenizeAttempt],
                stage_launch: Launch, now: datetime) -> TokensGate:
    """Where the stage's tokenize step stands, and what to start, before the stage may start."""
    workers = stage.data.tokenize.workers
    mine = sorted((a for a in attempts if a.run == status.run), key=lambda a: a.state.attempt)
    failed = [a.state for a in mine if a.state.phase == "Failed"]
    latest = mine[-1] if mine else None
    step = TokenizeStatus(workers=workers, last_failure=_failure(failed[-1]) if failed else None)
    launch, wait_s = None, None
    if latest is None:
        step.attempt, step.phase = 1, Phase.running
        launch = TokenizeLaunch(1, workers, stage_launch)
    elif latest.state.phase == "Failed" and _budget_left(stage, failed):
        step.attempt, step.phase = latest.state.attempt, Phase.running
        wait_s = _backoff_left(stage, failed, now)
        if latest.state.pods_gone and not wait_s:  # never two attempts' workers on one shard
            step.attempt += 1
            launch = TokenizeLaunch(step.attempt, workers, stage_launch)
    else:
        step.attempt, step.completed_workers = latest.state.attempt, latest.completed
        step.phase = {"Pending": Phase.running, "Running": Phase.running, "Succeeded": Phase.succeeded}.get(
            latest.state.phase, Phase.failed)
    step.retries = len(failed) - (step.phase == Phase.failed)
    step.job_name = tokenize_job_name(pipeline, stage.name, status.run, step.attempt)
    if step.phase == Phase.succeeded:
        return TokensGate(status.model_copy(update={"tokenize": step}), ready=True)
    update: dict = {"tokenize": step, "phase": Phase.running, "start_time": status.start_time or rfc3339(now)}
    if step.phase == Phase.failed:
        update.update(phase=Phase.failed, last_failure=step.last_failure, completion_time=failed[-1].completion_time,
                      message=f"the tokenize step failed on attempt {step.attempt} and its retry budget is spent: "
                              f"{step.last_failure.message}")
    elif launch is None and latest.state.phase == "Failed":
        update["message"] = (f"tokenize attempt {latest.state.attempt} failed; attempt {latest.state.attempt + 1} "
                             f"starts when its back-off ends and its pods are gone: {step.last_failure.message}")
    else:
        retry = f" (retry {step.retries}: the shards already complete are skipped)" if step.retries else ""
        update["message"] = (f"tokenizing the corpus before the stage starts: Job {step.job_name}, "
                             f"{step.completed_workers} of {workers} workers done{retry}")
    return TokensGate(status.model_copy(update=update), launch, wait_s=wait_s)


def _backoff_left(stage: Stage, failed: Sequence[AttemptState], now: datetime) -> float | None:
    """Seconds before the retry may start: `retries.backoffSeconds` x 2^(failures - 1), capped as
    the stage's own (plan.retry_time); a disruption is retried at once."""
    latest = failed[-1]
    ended = parse_time(latest.completion_time)
    if latest.disruption or ended is None:
        return None
    base = stage.retries.backoff_seconds
    delay = min(base * 2 ** max(0, sum(not a.disruption for a in failed) - 1), base * 32, 3600)
    left = (ended + timedelta(seconds=delay) - now).total_seconds()
    return round(left, 3) if left > 0 else None


def _budget_left(stage: Stage, failed: Sequence[AttemptState]) -> bool:
    """Each failure class spends its own budget of the stage's `retries`."""
    latest = failed[-1]
    if latest.disruption:
        return sum(a.disruption for a in failed) <= stage.retries.disruption
    if latest.infrastructure:
        return sum(a.infrastructure for a in failed) <= stage.retries.infrastructure
    return sum(not a.infrastructure and not a.disruption for a in failed) <= stage.retries.application


def _failure(attempt: AttemptState) -> Failure:
    class_ = "Disruption" if attempt.disruption else "Infrastructure" if attempt.infrastructure else "Application"
    return Failure(class_=class_, reason=REASON_TOKENIZE_FAILED if class_ == "Application" else attempt.reason or "PodFailed",
                   message=f"tokenize step: {attempt.message or 'a worker failed without a message'}", attempt=attempt.attempt)
