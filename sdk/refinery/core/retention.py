"""Checkpoint retention (`spec.checkpoints`): which complete checkpoints of a stage may go. Pure.

Two halves meet here, so both sides decide with the same code:
- the operator (`stages_to_prune`, `protected_paths`, `prune_arguments`): when a stage's attempt
  has just succeeded, start one short `refinery-train prune` Job on the volume, telling it the
  policy and the paths that must stay (the operator never touches the volume itself);
- that Job (`trainer/refinery_trainer/prune.py`): list the stage's checkpoints, read their
  markers, ask `checkpoints_to_delete`, delete.

Never deleted, whatever the policy:
- a partial checkpoint (no marker): it may be one being written, and it is never resumed from;
- the newest complete checkpoint: what a running or re-run attempt resumes from;
- a checkpoint used as an input: a stage's `model.path` on the volume, or a resolved input path
  (`status.stages[].inputs`) that points into this stage's checkpoints.

How this relates to the trainer's rotation (`training.keepCheckpoints`): rotation runs inside the
training process after every checkpoint and keeps the newest N complete ones, bounding the disk
*during* a run. Retention runs once the stage has succeeded, on what rotation left, and may keep
fewer (`keepLast`) or keep the best by a metric (`keepBest`, among the survivors: raise
`keepCheckpoints` if the best may be older than the newest N). The two never run at once on a
stage — the prune Job starts only after the stage's attempt succeeded — and both delete the same
way (marker first, then the folder), so a checkpoint half-deleted by either is simply partial;
deleting what is already gone is a no-op, so a prune Job that runs twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from ..api.v1alpha1 import CheckpointRetention, Phase, PipelineStatus, TrainingPipeline
from .naming import stage_dir


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint folder of a stage as found on the volume."""

    path: str
    step: int
    attempt: int
    complete: bool
    metrics: Mapping[str, float] = field(default_factory=dict)


def checkpoints_to_delete(checkpoints: Iterable[CheckpointInfo], policy: CheckpointRetention,
                          protected: Iterable[str] = ()) -> list[CheckpointInfo]:
    """The complete checkpoints the policy lets go, newest first."""
    complete = sorted((c for c in checkpoints if c.complete), key=lambda c: (c.step, c.attempt), reverse=True)
    keep: set[str] = {c.path for c in complete[: max(policy.keep_last or 1, 1)]}  # the newest always stays
    if policy.keep_best is not None:
        best = policy.keep_best
        scored = [c for c in complete if isinstance(c.metrics.get(best.metric), (int, float))]
        scored.sort(key=lambda c: (c.metrics[best.metric] if best.mode == "min" else -c.metrics[best.metric], -c.step))
        keep |= {c.path for c in scored[: best.count]}
    protected = [PurePosixPath(p) for p in protected]
    return [c for c in complete if c.path not in keep and not is_protected(c.path, protected)]


def is_protected(path: str, protected: Sequence[PurePosixPath]) -> bool:
    """`path` is a protected path, or lies inside one, or holds one (a model saved inside it)."""
    here = PurePosixPath(path)
    return any(here == p or here in p.parents or p in here.parents for p in protected)


def stages_to_prune(pipeline: TrainingPipeline, previous: PipelineStatus | None, current: PipelineStatus) -> list[str]:
    """Stages whose attempt succeeded since `previous`: each gets one prune Job (none without a policy).

    Edge-triggered on purpose: a level ("every succeeded stage has a prune Job") would cost a list
    call per reconcile. The caller creates the Jobs before it patches the status, so an operator
    that dies in between sees the same edge again (and the Job's deterministic name absorbs it).
    """
    if pipeline.spec.checkpoints is None:
        return []
    before = {s.name: s for s in (previous.stages if previous else [])}
    found = []
    for stage in current.stages:
        old = before.get(stage.name)
        if stage.phase == Phase.succeeded and (old is None or old.phase != Phase.succeeded or old.attempt != stage.attempt):
            found.append(stage.name)
    return found


def protected_paths(pipeline: TrainingPipeline, status: PipelineStatus, stage: str, pipeline_root: str, volume_root: str) -> list[str]:
    """Paths inside `stage`'s folder that another stage reads (its `model.path` or resolved inputs)."""
    folder = PurePosixPath(stage_dir(pipeline_root, stage))
    candidates: list[str] = []
    for spec in pipeline.spec.stages:
        if spec.model is not None and spec.model.path:
            path = PurePosixPath(spec.model.path)
            candidates.append(str(path if path.is_absolute() else PurePosixPath(volume_root) / path))
    for other in status.stages:
        if other.inputs is not None:
            candidates += [p for p in (other.inputs.model, other.inputs.reward_model) if p]
    return sorted({p for p in candidates if folder in PurePosixPath(p).parents})


def prune_arguments(policy: CheckpointRetention, stage_folder: str, protected: Iterable[str]) -> list[str]:
    """`refinery-train prune` arguments (the inverse of `prune.parse_policy`)."""
    args = ["prune", "--stage-dir", stage_folder]
    if policy.keep_last is not None:
        args += ["--keep-last", str(policy.keep_last)]
    if policy.keep_best is not None:
        best = policy.keep_best
        args += ["--keep-best", f"{best.metric}:{best.mode}:{best.count}"]
    for path in protected:
        args += ["--protect", path]
    return args
