"""What a stage's status takes from outside the attempt itself: its trainer's progress record, its
gate's verdict once it succeeded, and the models its upstream stages handed it. Pure; used by
`plan()` (core/plan.py) on every pass."""

from __future__ import annotations

from collections.abc import Mapping

from ..api.run import ProgressRecord
from ..api.v1alpha1 import Phase, Stage, StageInputs, StageStatus, StageType
from .naming import model_dir


def fold_record(status: StageStatus, record: ProgressRecord) -> None:
    """Copy what the stage pod reported into its status (checkpoints count across attempts)."""
    status.step = record.step
    status.max_steps = record.max_steps
    status.progress = record.progress
    # A failed attempt has no time left; its pace stays the stage's best guess for the next one.
    status.estimated_remaining_seconds = None if record.phase == "Failed" else record.estimated_remaining_seconds
    status.seconds_per_step = record.seconds_per_step or status.seconds_per_step
    status.checkpoints = max(status.checkpoints, record.checkpoints)
    if record.last_checkpoint is not None:
        status.last_checkpoint = record.last_checkpoint
    if record.attempt == status.attempt:
        status.resumed_from = record.resumed_from
    if record.phase == "Succeeded":
        status.metrics = dict(record.metrics)  # the stage's final figures (result.json), nothing else
    elif record.metrics:
        status.metrics = {**status.metrics, **record.metrics}
    if record.output:
        status.output = record.output


def gate_problem(stage: Stage, status: StageStatus) -> str | None:
    """Why a succeeded stage's gate does not hold (None when it holds, or nothing to check yet)."""
    gate = stage.gate
    if gate is None or status.phase != Phase.succeeded:
        return None
    held = gate.holds(status.metrics)
    if held:
        return None
    if held is None:
        missing = [m for m in (gate.metric, gate.value_from) if m and m not in status.metrics]
        reported = ", ".join(sorted(status.metrics)) or "none"
        return f"gate {gate.describe()} not met: the stage did not report {', '.join(missing)} (reported: {reported})"
    got = f"{gate.metric} = {status.metrics[gate.metric]:g}"
    if gate.value_from:
        got += f", {gate.value_from} = {status.metrics[gate.value_from]:g}"
    return f"gate {gate.describe()} not met: {got}"


def resolve_inputs(stage: Stage, stages: Mapping[str, StageStatus], pipeline_root: str) -> StageInputs | None:
    """Hand each stage its upstream stages' final models, by the path the upstream reported.
    An eval stage gets every model it scores (`models`), its judge as `rewardModel`; an rlhf stage
    the reward stages its `rl.rewards` and `rl.audit` name (`models`; `rewardModel`'s as before); the export
    step gets every stage's model (its lineage) and the exported one as `model`."""
    def output_of(name: str | None) -> str | None:
        if name is None:
            return None
        return stages[name].output or model_dir(pipeline_root, name, stages[name].run)

    reward = stage.eval_.generate.reward_model if stage.eval_ and stage.eval_.generate else stage.reward_model
    models = None
    if stage.eval_ is not None:
        models = {name: output_of(name) for name in stage.eval_.referenced_stages}
    elif stage.type == StageType.export:
        models = {name: output_of(name) for name in stage.dependencies}
    elif stage.type == StageType.rlhf and set(stage.reward_stages) - {stage.reward_model}:
        models = {name: output_of(name) for name in stage.reward_stages if name != stage.reward_model}
    inputs = StageInputs(model=output_of(stage.from_), reward_model=output_of(reward), models=models)
    return inputs if inputs.model or inputs.reward_model or inputs.models else None
