"""Local mode: run a TrainingPipeline on this machine, no cluster.

    refinery run examples/tiny-chat.yaml --workdir runs

The same pure `plan()` the operator uses decides what runs next; here an attempt is a
`refinery-train` child process instead of a Job, the volume is the work folder, and progress
records are files. The pipeline's status — exactly what the operator would write to `.status` —
is kept in `<workdir>/<pipeline>/status.json` and rewritten whenever it changes.

While it runs, the operator's metrics of the pipeline are served on localhost (`serve.py`: the
caller passes `on_status`, called with every new status, to record them); at the end a summary
table is printed and the stages' training curves are drawn into `<workdir>/<pipeline>/summary.png`
(`summary.py`, from the `metrics.jsonl` each attempt's trainer appends).

Re-running the same command continues a pipeline: stages that succeeded are kept; any other
stage starts a new attempt, which resumes from its newest complete checkpoint. Delete a stage's
folder to train it again from scratch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from refinery.api.run import (
    LOCAL_EVENTS_FILE, LOCAL_PIPELINE_FILE, LOCAL_STATUS_FILE, METRICS_PORT_ENV, PROGRESS_FILE, RESULT_FILE, FileReporter,
    ProgressRecord,
)
from refinery.api.v1alpha1 import Phase, PipelineStatus, StageStatus, TrainingPipeline
from refinery.core.events import WARNING, pipeline_events
from refinery.core.judging import CIRCULAR_JUDGE
from refinery.core.naming import pipeline_root, stage_dir
from refinery.core.plan import AttemptState, Observed, plan, rfc3339
from refinery.core.sources import InitializerDecision, record_inputs_check, source_failure_status
from refinery.core.stage_run import build_stage_run
from refinery.core.tokenize import TokenizeAttempt, TokenizeLaunch
from .display import ProgressDisplay, eval_table, summary_table
from .initializer import run_initializer
from .launcher import ForkedProcess, StageLauncher
from .summary import write_summary_plot

POLL_SECONDS = 0.2
STATUS_FILE = LOCAL_STATUS_FILE
PIPELINE_FILE = LOCAL_PIPELINE_FILE


@dataclass
class Attempt:
    stage: str
    number: int
    process: subprocess.Popen | ForkedProcess
    log_path: Path
    started: str
    ended: str | None = None

    def state(self) -> AttemptState:
        code = self.process.poll()
        if code is None:
            return AttemptState(self.number, "Running", start_time=self.started, ready=True, pods_gone=False)
        if code == 0:
            return AttemptState(self.number, "Succeeded", start_time=self.started, completion_time=self.ended)
        killed = code < 0  # ended by a signal: the machine, not the trainer, stopped it
        reason = f"KilledBy{signal.Signals(-code).name}" if killed else f"ExitCode{code}"
        message = f"the trainer was killed by {signal.Signals(-code).name}" if killed else last_line(self.log_path)
        return AttemptState(self.number, "Failed", reason, message, infrastructure=killed,
                            start_time=self.started, completion_time=self.ended)


@dataclass
class LocalPipeline:
    pipeline: TrainingPipeline
    root: Path
    data_root: Path
    attempts: dict[str, list[Attempt]] = field(default_factory=dict)
    finished_before: dict[str, AttemptState] = field(default_factory=dict)
    launcher: StageLauncher = field(default_factory=StageLauncher)
    # stage -> its tokenize steps: (the stage's run, the step's process, its workers)
    steps: dict[str, list[tuple[int, Attempt, int]]] = field(default_factory=dict)

    def observe(self, status: PipelineStatus) -> Observed:
        attempts: dict[str, list[AttemptState]] = {}
        for name, done in self.finished_before.items():
            attempts[name] = [done]
        for name, started in self.attempts.items():
            attempts.setdefault(name, []).extend(a.state() for a in started)
        tokenize = {name: [TokenizeAttempt(run, a.state(), workers if a.process.poll() == 0 else 0) for run, a, workers in steps]
                    for name, steps in self.steps.items()}
        return Observed(attempts=attempts, records=self.read_records(status), tokenize=tokenize)

    def progress_file(self, stage: str, run: int) -> Path:
        """Where a stage's processes report (the file the trainer's FileReporter rewrites)."""
        return Path(stage_dir(str(self.root), stage, run)) / PROGRESS_FILE

    def read_records(self, status: PipelineStatus) -> dict[str, ProgressRecord]:
        records = {}
        for stage in self.pipeline.spec.run_stages:
            run = (status.stage(stage.name) or StageStatus(name=stage.name)).run
            path = self.progress_file(stage.name, run)
            try:
                records[stage.name] = ProgressRecord.model_validate_json(path.read_text())
            except (FileNotFoundError, ValueError):
                continue  # not written yet, or caught mid-rename on an odd filesystem: next poll
        return records

    def start(self, launch) -> None:
        run = build_stage_run(
            self.pipeline, launch, str(self.root), str(self.data_root),
            FileReporter(path=str(self.progress_file(launch.stage, launch.run))),
        )
        runs_dir = self.root / ".runs"
        runs_dir.mkdir(parents=True, exist_ok=True)
        config = runs_dir / f"{launch.stage}-{launch.attempt}.json"
        config.write_text(json.dumps(run.dump(), indent=2))
        log_path = runs_dir / f"{launch.stage}-{launch.attempt}.log"
        process = self.launcher.start(config, log_path, {**trainer_environment(), "TOKENIZERS_PARALLELISM": "false"})
        self.attempts.setdefault(launch.stage, []).append(
            Attempt(launch.stage, launch.attempt, process, log_path, now_stamp())
        )

    def start_tokenize(self, step: TokenizeLaunch) -> None:
        """The stage's tokenize step: one `refinery-train tokenize --workers N` process, whose N
        worker processes take the slices an Indexed Job's pods would (sources/tokenize.py)."""
        launch = step.stage_launch
        run = build_stage_run(self.pipeline, launch, str(self.root), str(self.data_root), None)
        runs_dir = self.root / ".runs"
        runs_dir.mkdir(parents=True, exist_ok=True)
        name = f"{launch.stage}-tokenize-{launch.run}-{step.attempt}"
        config, log_path = runs_dir / f"{name}.json", runs_dir / f"{name}.log"
        config.write_text(json.dumps(run.dump(), indent=2))
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "refinery_trainer", "tokenize", "--config", str(config), "--workers", str(step.workers)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=trainer_environment())
        self.steps.setdefault(launch.stage, []).append((launch.run, Attempt(name, step.attempt, process, log_path, now_stamp()),
                                                        step.workers))

    def running(self) -> list[Attempt]:
        out = []
        for started in [*self.attempts.values(), *([a for _, a, _ in steps] for steps in self.steps.values())]:
            for attempt in started:
                if attempt.process.poll() is None:
                    out.append(attempt)
                elif attempt.ended is None:
                    attempt.ended = now_stamp()
        return out

    def stop_all(self) -> None:
        for attempt in self.running():
            attempt.process.terminate()
        for attempt in self.running():
            try:
                attempt.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                attempt.process.kill()


def run_local(pipeline: TrainingPipeline, workdir: Path, data_root: Path, show_progress: bool = True,
              on_status: Callable[[PipelineStatus], None] | None = None) -> bool:
    """Run one pipeline to the end; return whether it succeeded. `on_status` is called with the
    status at the start and after every change (local mode records its metrics with it).

    `spec.suspend: true` is refused: local mode has no Job to suspend. Stop a run with Ctrl-C
    instead (the trainer saves a checkpoint on SIGTERM) and run the same command to resume.
    """
    if pipeline.spec.suspend:
        print(f"pipeline {pipeline.metadata.name!r} has spec.suspend: true, so nothing runs; set it to false to run it "
              "(in local mode, Ctrl-C stops a run after a checkpoint and the same command resumes it)", file=sys.stderr)
        return False
    root = Path(pipeline_root(str(workdir.resolve()), None, pipeline.metadata.name))
    root.mkdir(parents=True, exist_ok=True)
    local = LocalPipeline(pipeline, root, data_root.resolve())
    write_pipeline(root, pipeline, data_root.resolve())
    status = continue_from(root, pipeline, local)
    on_status = on_status or (lambda status: None)
    local.launcher.warm_up()  # the stages' libraries load while the initializer checks the inputs
    fetched = run_initializer(pipeline, root, data_root.resolve(), trainer_environment())
    if fetched.phase == "Failed":  # nothing trains on a pipeline whose inputs are not all there
        status = source_failure_status(status, fetched, None, datetime.now(timezone.utc))
        write_status(root, status)
        on_status(status)
        print(f"pipeline {pipeline.metadata.name!r} failed before any stage started ({fetched.reason}): "
              f"{fetched.message}\n  log: {root / '.runs' / 'sources.log'}", file=sys.stderr)
        return False
    checked = InitializerDecision(ready=True, sources=tuple(fetched.sources), checked_by="refinery-train fetch")
    record_inputs_check(status, pipeline, checked, None, datetime.now(timezone.utc))  # status.sources, InputsChecked
    on_status(status)
    display = ProgressDisplay([s.name for s in pipeline.spec.run_stages], enabled=show_progress)
    try:
        while True:
            current = pipeline.model_copy(update={"status": status})
            decided = plan(current, local.observe(status), str(root), datetime.now(timezone.utc))
            for step in decided.tokenize_launches:
                local.start_tokenize(step)
            for launch in decided.launches:
                local.start(launch)
            if decided.status != status:
                warn_about(status, decided.status)
                record_events(root, status, decided.status)
                status = decided.status
                write_status(root, status)
                on_status(status)
            display.update(status)
            if status.phase in (Phase.succeeded, Phase.failed) and not local.running():
                break
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        local.stop_all()
        display.close()
        print(f"\ninterrupted; run the same command again to resume ({root / STATUS_FILE})", file=sys.stderr)
        return False
    display.close()
    print(summary_table(status) + eval_table(status, pipeline))
    for stage in status.stages:
        if stage.phase == Phase.failed:
            logs = sorted((root / ".runs").glob(f"{stage.name}-*.log"))
            print(f"\nstage {stage.name!r} failed: {stage.message}\n  log: {logs[-1] if logs else '-'}", file=sys.stderr)
    plot = write_summary_plot(root, pipeline, status)
    print(f"status: {shown(root / STATUS_FILE)}")
    if plot is not None:
        print(f"plots: {shown(plot)}")
    if status.phase == Phase.succeeded:
        print(next_steps(pipeline, status, root))
    return status.phase == Phase.succeeded


# Warnings a person running locally must see as they happen (in a cluster: Warning Events).
LOCAL_WARNINGS = (CIRCULAR_JUDGE,)


def warn_about(old: PipelineStatus, new: PipelineStatus) -> None:
    for event in pipeline_events(old, new):
        if event.type == WARNING and event.reason in LOCAL_WARNINGS:
            print(f"warning ({event.reason}): {event.message}", file=sys.stderr)


def record_events(root: Path, old: PipelineStatus, new: PipelineStatus) -> None:
    """Append the Events a cluster would post for this change to events.jsonl (`refinery describe`,
    `Client.events` read them)."""
    events = pipeline_events(old, new)
    if events:
        with open(root / LOCAL_EVENTS_FILE, "a", encoding="utf-8") as out:
            for event in events:
                out.write(json.dumps({"time": now_stamp(), "type": event.type, "reason": event.reason,
                                      "message": event.message}) + "\n")


def next_steps(pipeline: TrainingPipeline, status: PipelineStatus, root: Path) -> str:
    """What to do with the result: where the export went, and how to chat with the model."""
    lines = []
    export = status.stage("export") if pipeline.spec.export else None
    if export is not None and export.output:
        where = export.output if "://" in export.output else shown(Path(export.output))
        lines.append(f"exported: {pipeline.spec.export.stage} -> {where}")
    stage = pipeline.spec.export.stage if pipeline.spec.export else None
    lines.append(f"chat with it: refinery chat {shown(root)}" + (f" --stage {stage}" if stage else ""))
    return "\n".join(lines)


def shown(path: Path) -> str:
    """A path as a person would type it here: relative when under the current folder."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def continue_from(root: Path, pipeline: TrainingPipeline, local: LocalPipeline) -> PipelineStatus:
    """The status of an earlier run of this pipeline in the same work folder, made resumable:
    succeeded stages stay done; the others get a new attempt number (a fresh retry budget)."""
    try:
        previous = PipelineStatus.model_validate_json((root / STATUS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return PipelineStatus()
    known = {s.name for s in pipeline.spec.run_stages}
    stages = []
    for stage in previous.stages:
        if stage.name not in known:
            continue
        finished = (Path(stage_dir(str(root), stage.name, stage.run)) / RESULT_FILE).exists()
        if stage.phase == Phase.succeeded and finished:
            local.finished_before[stage.name] = AttemptState(
                stage.attempt, "Succeeded", start_time=stage.start_time, completion_time=stage.completion_time
            )
        elif stage.attempt > 0:
            stage = stage.model_copy(update={"phase": Phase.pending, "attempt": stage.attempt + 1, "completion_time": None})
        stages.append(stage)
    return PipelineStatus(stages=stages)


def write_pipeline(root: Path, pipeline: TrainingPipeline, data_root: Path) -> None:
    """The manifest the run follows (and the folder its data paths resolve against), beside its
    status: `refinery export` and `refinery chat` read a finished run from these two files."""
    tmp = root / f".{PIPELINE_FILE}.tmp"
    manifest = pipeline.model_copy(update={"status": None}).dump()
    tmp.write_text(json.dumps({"dataRoot": str(data_root), "pipeline": manifest}, indent=2) + "\n")
    os.replace(tmp, root / PIPELINE_FILE)


def write_status(root: Path, status: PipelineStatus) -> None:
    """Atomically replace status.json, so a reader never sees half a file."""
    tmp = root / f".{STATUS_FILE}.tmp"
    tmp.write_text(json.dumps(status.dump(), indent=2) + "\n")
    os.replace(tmp, root / STATUS_FILE)


def trainer_environment() -> dict[str, str]:
    """This process's environment for a stage process, less local mode's metrics port: a stage
    process would otherwise try to serve its trainer metrics on the same port."""
    return {k: v for k, v in os.environ.items() if k != METRICS_PORT_ENV}


def last_line(path: Path) -> str:
    try:
        lines = [l for l in path.read_text(errors="replace").splitlines() if l.strip()]
    except FileNotFoundError:
        return "the trainer failed before writing a log"
    return lines[-1][:500] if lines else "the trainer exited with an error and printed nothing"


def now_stamp() -> str:
    return rfc3339(datetime.now(timezone.utc))
