"""The one decision function: given a pipeline and what is observed of its stages, what should
the status say, which stage attempts should start now, and which running ones must stop?

`plan()` is pure and level-based: it reads the spec, the previous status and the observed
attempts (Jobs in a cluster, processes in local mode) and progress records, and returns the
complete desired status plus the attempts to launch and to stop. The operator and the local
runner both call it, so a pipeline behaves the same on a laptop and on a cluster.

Decisions written down here:
- A stage starts when every stage it depends on has succeeded and met its `gate` (independent
  stages run in parallel). Once any stage has failed for good, or a gate is not met (reason
  `GateNotMet`), no new stage starts (fail fast, like Argo's DAG default); running ones finish.
- A failed attempt is retried while its failure class has budget left (`retries.application`
  for the trainer's own failures — exit code, `NanLoss`, `BadData` —, `retries.infrastructure`
  for the platform's — OOM-killed, `StartTimeout`, deadline). The retry is a new attempt number;
  the trainer resumes it from the newest complete checkpoint.
- A `Misconfigured` failure (`NOT_RETRIED`: the stage's settings do not fit its model or data) is
  not retried whatever budget is left, since it is deterministic; the message says what to change.
- A disruption (pod deleted, evicted, preempted, node lost, SIGTERM, a rank failing because a peer
  was) is not a failure: it spends neither budget and is retried at once, without back-off; only
  disruptions in a row without a newer checkpoint are limited (`retries.disruption`, then reason
  `DisruptedWithoutProgress`). Why its own budget: core/disruption.py.
- Retries back off exponentially: `retries.backoffSeconds` x 2^(failures - 1), capped at 32x
  (and 1 h); `status.stages[].nextAttemptTime` says when, `Plan.requeue_after` when to look again.
- Attempt N+1 starts only when no pod of any earlier attempt remains (`AttemptState.pods_gone`:
  the Job's `active` and `terminating` are 0), so two attempts never write one stage at once.
- An attempt whose pod is not ready `retries.startTimeoutSeconds` after its Job started (image
  pull back-off, unschedulable) is stopped as an infrastructure failure `StartTimeout`.
- `spec.suspend` stops running attempts (`Stop(action="suspend")`: their pods get SIGTERM, the
  trainer saves a checkpoint) and starts nothing; unsuspended, the same attempt resumes from that
  checkpoint (`Stop(action="resume")`). A Job suspended by Kueue (`spec.queueName`: created
  suspended, unsuspended on admission) is queued, not ours to resume. Suspension spends no budget.
- Re-runs (core/reruns.py): the `refinery.dev/rerun-from` annotation or a changed stage spec
  starts a new run of that stage and of everything downstream; upstream outputs are reused.
- The status is rebuilt from observations on every call; the previous status is only consulted
  for first-seen timestamps, running totals and what a pod reported but no longer shows (so a
  reconcile that observes nothing new produces an identical status, and nothing is patched).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from ..api.run import ProgressRecord
from ..api.v1alpha1 import (
    Failure, Phase, PipelineStatus, Stage, StageInputs, StageStatus, TrainingPipeline,
)
from .conditions import rfc3339
from .accounting import gpu_seconds, lost_gpu_seconds, parse_time, restart_counts
from .eta import pipeline_seconds_left, words
from .disruption import count_disruption, disrupted_without_progress, sigterm_as_disruption
from .naming import job_name
from .reruns import downstream, requested_stage, spec_hash
from .hacking import export_hold, set_hacking_condition
from .judging import set_circular_judge_condition
from .stage_status import fold_record, gate_problem, resolve_inputs  # noqa: F401  (also used as plan.*)
from .summary import summarize
from .tokenize import TokenizeAttempt, TokenizeLaunch, needs_tokenize_step, tokens_gate

AttemptPhase = Literal["Pending", "Running", "Succeeded", "Failed"]
MAX_BACKOFF_FACTOR = 32
MAX_BACKOFF_S = 3600
REASON_START_TIMEOUT = "StartTimeout"  # no pod of an attempt (a stage's or the initializer's) became ready in time
# Failures a retry would repeat (the trainer's refinery_trainer.errors.REASON_MISCONFIGURED: settings
# that do not fit the model, tokenizer or data): the stage fails at once, whatever budget is left.
NOT_RETRIED = frozenset({"Misconfigured"})


@dataclass(frozen=True)
class AttemptState:
    """What the backend observes of one attempt of a stage (a Job, or a local process)."""

    attempt: int
    phase: AttemptPhase
    reason: str | None = None  # CamelCase, e.g. "TrainerError", "Disrupted"
    message: str | None = None
    infrastructure: bool = False  # the platform, not the trainer, ended it
    start_time: str | None = None
    completion_time: str | None = None
    pods_gone: bool = True  # no pod of the attempt is running or terminating
    ready: bool = False  # every pod of the attempt is ready (or done): it has started
    suspended: bool = False  # the Job is suspended (by us for spec.suspend, or by Kueue until admitted)
    held_seconds: float = 0.0  # time its pods ran before its latest suspension (Kubernetes restarts startTime on resume)
    deleting: bool = False  # the Job is being deleted
    superseded: bool = False  # stopped by the operator for a re-run: not a failure
    disruption: bool = False  # ended from outside the trainer (core/disruption.py): not a failure
    node: str | None = None  # the node lost or drained, when a disruption names one


@dataclass(frozen=True)
class Observed:
    attempts: Mapping[str, Sequence[AttemptState]] = field(default_factory=dict)  # every attempt, per stage
    records: Mapping[str, ProgressRecord] = field(default_factory=dict)  # latest record, per stage
    rerun_request: str | None = None  # the `refinery.dev/rerun-from` annotation
    sources_ready: bool = True  # the pipeline's initializer fetched and checked every input (core/sources.py)
    tokenize: Mapping[str, Sequence[TokenizeAttempt]] = field(default_factory=dict)  # per stage (core/tokenize.py)

    def latest(self, stage: str, first_attempt: int = 1) -> AttemptState | None:
        attempts = [a for a in self.attempts.get(stage) or () if a.attempt >= first_attempt]
        return max(attempts, key=lambda a: a.attempt, default=None)


@dataclass(frozen=True)
class Launch:
    stage: str
    attempt: int
    inputs: StageInputs | None  # None: the stage starts from its own `model`
    run: int = 0  # re-runs of the stage: where its files go (core/naming.stage_dir)


@dataclass(frozen=True)
class Stop:
    """Act on a running attempt: suspend it, resume it, or end it as failed (`reason`)."""

    stage: str
    attempt: int
    action: Literal["suspend", "resume", "fail"]
    reason: str = ""
    message: str = ""
    held_seconds: float | None = None  # suspend: the attempt's pod time so far, kept on the Job (accounting)


@dataclass(frozen=True)
class Plan:
    status: PipelineStatus
    launches: tuple[Launch, ...]
    stops: tuple[Stop, ...] = ()
    requeue_after: float | None = None  # seconds until a back-off or a start deadline ends
    # Stages that would start now but for the inputs check (Observed.sources_ready): the
    # operator starts the initializer Job for them (core/sources.py).
    waiting_for_inputs: tuple[str, ...] = ()
    tokenize_launches: tuple[TokenizeLaunch, ...] = ()  # tokenize steps to start before their stage (core/tokenize.py)


def plan(pipeline: TrainingPipeline, observed: Observed, pipeline_root: str, now: datetime) -> Plan:
    """Desired status, attempts to start and attempts to stop, from spec + observations."""
    stamp = rfc3339(now)
    spec = pipeline.spec
    previous = pipeline.status or PipelineStatus()
    stops: list[Stop] = []
    prev_by_name, rerun_request = start_reruns(pipeline, previous, observed, stops)

    by_name = {s.name: observe_stage(s, prev_by_name[s.name], observed, pipeline.metadata.name, stamp) for s in spec.run_stages}
    gates = {s.name: msg for s in spec.run_stages if (msg := gate_problem(s, by_name[s.name]))}
    if (hold := export_hold(pipeline, by_name)) is not None:  # a model that gamed its reward is not exported
        gates.setdefault(*hold)
    failed_for_good = bool(gates) or any(s.phase == Phase.failed for s in by_name.values())
    launches: list[Launch] = []
    waits: list[float] = []
    waiting_for_inputs: list[str] = []
    tokenize_launches: list[TokenizeLaunch] = []
    for stage in spec.run_stages:
        if not all(by_name[d].phase == Phase.succeeded and d not in gates for d in stage.dependencies):
            continue
        # Recomputed on every call, not remembered from the launch: the inputs are a function of
        # the upstream outputs, so a status that lost them (or never had them) gets them back.
        status = by_name[stage.name] = by_name[stage.name].model_copy(update={"inputs": resolve_inputs(stage, by_name, pipeline_root)})
        attempt = next_attempt(status, observed.latest(stage.name, status.first_attempt))
        if attempt is None or failed_for_good or spec.suspend:
            continue
        busy = [a.attempt for a in observed.attempts.get(stage.name) or () if not a.pods_gone]
        if busy:
            status.message = f"waiting for the pods of attempt {max(busy)} to terminate before attempt {attempt} starts"
            continue
        not_before = parse_time(status.next_attempt_time)
        if not_before is not None and now < not_before:
            waits.append((not_before - now).total_seconds())
            continue
        if not observed.sources_ready:  # would start now, but the inputs are not checked yet
            waiting_for_inputs.append(stage.name)
            continue
        if needs_tokenize_step(stage):  # its corpus is tokenized first, by a parallel step
            gate = tokens_gate(pipeline.metadata.name, stage, status, observed.tokenize.get(stage.name, ()),
                               Launch(stage.name, attempt, status.inputs, status.run), now)
            status = by_name[stage.name] = gate.status
            tokenize_launches += [gate.launch] if gate.launch else []
            waits += [gate.wait_s] if gate.wait_s else []
            if not gate.ready:
                continue
        launches.append(Launch(stage.name, attempt, status.inputs, status.run))
        by_name[stage.name] = status.model_copy(update=dict(
            phase=Phase.running, attempt=attempt, job_name=job_name(pipeline.metadata.name, stage.name, attempt),
            start_time=status.start_time or stamp, completion_time=None, next_attempt_time=None, message=None,
            spec_hash=status.spec_hash or spec_hash(stage),
        ))

    queued: list[str] = []  # stages whose Job waits for Kueue to admit it
    for stage in spec.run_stages:
        status = by_name[stage.name]
        latest = observed.latest(stage.name, status.first_attempt)
        waits += control_attempt(pipeline, stage, status, latest, now, stops)
        if latest is not None and latest.suspended and spec.queue_name and not spec.suspend and status.phase == Phase.running:
            queued.append(stage.name)
        final = latest.attempt if latest is not None and latest.phase == "Failed" and status.phase == Phase.failed else None
        status.restarts_by_class = restart_counts(
            [sigterm_as_disruption(a, observed.records.get(stage.name), stage) for a in observed.attempts.get(stage.name) or ()],
            final, status.restarts_by_class)
        status.restarts = sum(status.restarts_by_class.model_dump().values())
        if gates.get(stage.name):
            status.message = gates[stage.name]

    stages = [by_name[s.name] for s in spec.run_stages]
    status = summarize(stages, gates, spec.suspend, previous, pipeline.metadata.generation, stamp,
                       queued=queued, queue_name=spec.queue_name)
    status.rerun_request = rerun_request
    status.sources = previous.sources  # what the pipeline's initializer fetched (core/sources.py)
    if status.phase == Phase.running:
        status.estimated_remaining_seconds = pipeline_seconds_left(spec.run_stages, by_name, now)
        status.eta = words(status.estimated_remaining_seconds)
    set_hacking_condition(pipeline, status, stamp)
    set_circular_judge_condition(pipeline, status, stamp)
    return Plan(status=status, launches=tuple(launches), stops=tuple(stops),
                requeue_after=round(min(waits), 3) if waits else None, waiting_for_inputs=tuple(waiting_for_inputs),
                tokenize_launches=tuple(tokenize_launches))


# ----------------------------------------------------------------------------------------------
# re-runs


def start_reruns(pipeline: TrainingPipeline, previous: PipelineStatus, observed: Observed,
                 stops: list[Stop]) -> tuple[dict[str, StageStatus], str | None]:
    """Previous stage statuses, with a new run started for every stage to re-run; stops the
    attempts those runs replace. Returns them and the rerun request now handled."""
    stages = pipeline.spec.run_stages
    prev = {s.name: previous.stage(s.name) or StageStatus(name=s.name) for s in stages}
    roots = {s.name for s in stages if prev[s.name].spec_hash and prev[s.name].spec_hash != spec_hash(s)}
    request = previous.rerun_request
    if observed.rerun_request and observed.rerun_request != previous.rerun_request:
        request = observed.rerun_request
        if (name := requested_stage(request)) in prev:
            roots.add(name)
    for name in sorted(downstream(stages, roots)) if roots else ():
        status = prev[name]
        attempts = observed.attempts.get(name) or ()
        if status.attempt < status.first_attempt and not any(a.attempt >= status.first_attempt for a in attempts):
            continue  # not started in this run: nothing to re-run
        # Not every observed attempt: one created by a reconcile that crashed before recording this
        # re-run in the status is already the new run's first attempt (its Job is adopted, not stopped).
        highest = max([a.attempt for a in attempts if a.phase in ("Succeeded", "Failed")] + [status.attempt])
        prev[name] = StageStatus(
            name=name, attempt=status.attempt, run=status.run + 1, first_attempt=highest + 1,
            restarts=status.restarts, restarts_by_class=status.restarts_by_class, last_failure=status.last_failure,
            gpu_seconds=status.gpu_seconds, lost_gpu_seconds=status.lost_gpu_seconds,
            message=f"re-run {status.run + 1}: " + ("requested by annotation" if name == requested_stage(request) and name in roots
                                                    else "its spec or an upstream stage changed"),
        )
        for a in attempts:
            if a.phase in ("Pending", "Running") and not a.deleting and a.attempt <= highest:
                stops.append(Stop(name, a.attempt, "fail", "Superseded", f"stage {name!r} is re-run"))
    return prev, request


# ----------------------------------------------------------------------------------------------
# one stage


def observe_stage(stage: Stage, prev: StageStatus, observed: Observed, pipeline: str, stamp: str) -> StageStatus:
    """Fold the current run's latest attempt and progress record of one stage into its status."""
    status = prev.model_copy(deep=True)
    attempts = [a for a in observed.attempts.get(stage.name) or () if a.attempt >= status.first_attempt]
    latest = max(attempts, key=lambda a: a.attempt, default=None)
    record = observed.records.get(stage.name)
    if record is not None and record.attempt < status.first_attempt:
        record = None  # a report of the run this one replaced
    if latest is not None:
        status.attempt = max(status.attempt, latest.attempt)
    if record is not None:
        fold_record(status, record)
    every = observed.attempts.get(stage.name) or ()
    status.gpu_seconds = max(status.gpu_seconds, gpu_seconds(stage, every, record))
    if latest is None:
        return status
    if latest.phase != "Pending" or latest.start_time:
        status.spec_hash = status.spec_hash or spec_hash(stage)  # a run started before hashes existed
    failures = [sigterm_as_disruption(a, record, stage) for a in attempts if a.phase == "Failed" and not a.superseded]
    latest = next((a for a in failures if a.attempt == latest.attempt), latest)
    if failures:
        newest = max(failures, key=lambda a: a.attempt)
        if prev.last_failure is None or prev.last_failure.attempt != newest.attempt:
            status.lost_gpu_seconds = round(status.lost_gpu_seconds + lost_gpu_seconds(stage, newest, status), 3)
            count_disruption(status, newest)
        status.last_failure = failure_of(newest, record)
    status.job_name = job_name(pipeline, stage.name, latest.attempt)
    status.start_time = status.start_time or latest.start_time or stamp
    if latest.phase in ("Pending", "Running"):
        status.phase, status.completion_time, status.next_attempt_time, status.message = Phase.running, None, None, None
    elif latest.phase == "Succeeded":
        status.phase, status.progress, status.next_attempt_time, status.message = Phase.succeeded, 1.0, None, None
        status.completion_time = status.completion_time or latest.completion_time or stamp
        status.output = status.output or (record.output if record else None)
        # lastFailure stays: a stage that succeeded on its second attempt still says why it needed one.
    elif status.last_failure.reason not in NOT_RETRIED and retry_budget_left(stage, failures, status):
        status.phase = Phase.running  # a retry is launched when the back-off ends
        same = prev.last_failure is not None and prev.last_failure.attempt == latest.attempt
        status.next_attempt_time = prev.next_attempt_time if same and prev.next_attempt_time else \
            (latest.completion_time or stamp) if latest.disruption else \
            retry_time(stage, len([a for a in failures if not a.disruption]), latest.completion_time or stamp)
        status.message = (f"attempt {latest.attempt} failed ({status.last_failure.reason}); "
                          f"attempt {latest.attempt + 1} starts at {status.next_attempt_time}")
    else:
        status.phase, status.next_attempt_time = Phase.failed, None
        status.completion_time = status.completion_time or latest.completion_time or stamp
        if latest.disruption:
            status.last_failure = disrupted_without_progress(stage, status)
            status.message = f"attempt {latest.attempt} was disrupted: {status.last_failure.message}"
            return status
        budget = stage.retries.infrastructure if latest.infrastructure else stage.retries.application
        kind = "infrastructure" if latest.infrastructure else "application"
        status.message = (f"attempt {latest.attempt} failed and the {kind} retry budget ({budget}) is spent: "
                          f"{status.last_failure.message}")
        if status.last_failure.reason in NOT_RETRIED:
            status.message = (f"attempt {latest.attempt} failed ({status.last_failure.reason}, not retried: a retry "
                              f"would fail the same way): {status.last_failure.message}")
    return status


def control_attempt(pipeline: TrainingPipeline, stage: Stage, status: StageStatus, latest: AttemptState | None,
                    now: datetime, stops: list[Stop]) -> list[float]:
    """Suspend, resume or time out the stage's running attempt; returns seconds to look again."""
    spec = pipeline.spec
    if latest is None or latest.phase not in ("Pending", "Running"):
        if spec.suspend and status.phase == Phase.running:
            # No Job: the attempt's Job was deleted to suspend it (Kueue) and is re-created on resume;
            # a failed one: its retry waits.
            status.phase, status.message = Phase.suspended, (
                "suspended; the next attempt starts when spec.suspend is false" if latest is not None else
                f"suspended; attempt {status.attempt} resumes from its newest checkpoint when spec.suspend is false")
        return []
    if spec.suspend:
        if not latest.deleting and (not latest.suspended or spec.queue_name):
            stops.append(Stop(stage.name, latest.attempt, "suspend", "Suspended", "spec.suspend is true",
                              held_seconds=held_until(latest, now)))
        if latest.pods_gone and (latest.suspended or latest.deleting):
            status.phase = Phase.suspended
            status.message = "suspended; resumes from its newest checkpoint when spec.suspend is false"
        else:
            status.message = f"suspending: attempt {latest.attempt} is saving a checkpoint and stopping"
        return []
    if latest.suspended:
        if spec.queue_name:
            status.message = f"queued: waiting for Kueue to admit it (LocalQueue {spec.queue_name!r})"
        else:
            stops.append(Stop(stage.name, latest.attempt, "resume", "Resumed", "spec.suspend is false"))
        return []
    timeout = stage.retries.start_timeout_seconds
    left = start_time_left(latest, timeout, now)
    if left is None:
        return []
    if left > 0:
        return [left]
    pods = "no pod" if stage.resources.nodes == 1 else f"not all {stage.resources.nodes} pods (one per node)"
    stops.append(Stop(stage.name, latest.attempt, "fail", REASON_START_TIMEOUT,
                      f"{pods} of attempt {latest.attempt} {'was' if stage.resources.nodes == 1 else 'were'} ready "
                      f"{timeout}s after it started: look for "
                      "ImagePullBackOff (spec.image), an unschedulable pod (GPUs, nodeSelector, tolerations) or a "
                      "volume that cannot attach in `kubectl describe pod`"))
    return []


def start_time_left(attempt: AttemptState, timeout: int, now: datetime) -> float | None:
    """Seconds before `attempt` fails as StartTimeout (none left: it has), or None when no deadline
    applies: a pod is ready, the attempt has not started, or it is being deleted."""
    started = parse_time(attempt.start_time)
    if attempt.ready or started is None or attempt.deleting:
        return None
    return (started + timedelta(seconds=timeout) - now).total_seconds()


def held_until(attempt: AttemptState, now: datetime) -> float:
    """The attempt's pod time up to `now`: what its Job keeps across a suspension, since resuming
    restarts the Job's startTime (see core/accounting.py)."""
    started = parse_time(attempt.start_time)
    running = 0.0 if attempt.suspended or started is None else max(0.0, (now - started).total_seconds())
    return round(attempt.held_seconds + running, 3)


def retry_time(stage: Stage, failures: int, failed_at: str) -> str:
    """When the retry after the `failures`-th failure of this run may start."""
    base = stage.retries.backoff_seconds
    delay = min(base * 2 ** max(0, failures - 1), base * MAX_BACKOFF_FACTOR, MAX_BACKOFF_S)
    start = parse_time(failed_at)
    return rfc3339(start + timedelta(seconds=delay)) if start else failed_at


def failure_of(attempt: AttemptState, record: ProgressRecord | None) -> Failure:
    """The trainer's own words win over the Job's generic reason when it reported a failure."""
    if attempt.disruption:
        return Failure(class_="Disruption", reason=attempt.reason or "Disrupted", node=attempt.node,
                       message=attempt.message or "the attempt was stopped from outside the trainer", attempt=attempt.attempt)
    reported = record is not None and record.attempt == attempt.attempt and record.phase == "Failed"
    if not attempt.infrastructure and reported and record.message:
        return Failure(class_="Application", reason=record.failure_reason or "TrainerError", message=record.message,
                       attempt=attempt.attempt)
    return Failure(
        class_="Infrastructure" if attempt.infrastructure else "Application",
        reason=attempt.reason or ("PodFailed" if attempt.infrastructure else "TrainerError"),
        message=attempt.message or "the stage's pod failed without a message",
        attempt=attempt.attempt,
    )


def retry_budget_left(stage: Stage, failures: Sequence[AttemptState], status: StageStatus) -> bool:
    """Whether the newest failure of the run may be retried: each class spends its own budget;
    disruptions only those in a row without progress (status.disruptionsInARow)."""
    latest = max(failures, key=lambda a: a.attempt)
    if latest.disruption:
        return status.disruptions_in_a_row <= stage.retries.disruption
    infra = sum(1 for a in failures if a.infrastructure)
    if latest.infrastructure:
        return infra <= stage.retries.infrastructure
    return sum(1 for a in failures if not a.infrastructure and not a.disruption) <= stage.retries.application


def next_attempt(status: StageStatus, latest: AttemptState | None) -> int | None:
    """The attempt to launch now, or None when the stage needs no new attempt."""
    if latest is None:
        # Never observed in this run: start its first attempt (or re-create the attempt the status
        # names, which is idempotent because the Job name is deterministic).
        return None if status.phase in (Phase.succeeded, Phase.failed) else max(status.attempt, status.first_attempt)
    if latest.phase == "Failed" and status.phase in (Phase.running, Phase.suspended):
        return latest.attempt + 1
    return None
