"""The pod settings users give (`env`, `envFrom`, `volumes`, `volumeMounts`; api/pod.py), as the
container and pod fields of stage Jobs and the initializer Job."""

from __future__ import annotations

from typing import Any

from refinery.api.v1alpha1 import Stage, TrainingPipeline


def user_env(pipeline: TrainingPipeline, stages: list[Stage]) -> list[dict[str, Any]]:
    """`spec.env`, then each stage's `env` (later ones win, as in Kubernetes): after ours."""
    return [v.dump() for v in [*(pipeline.spec.env or ()), *(v for s in stages for v in s.env or ())]]


def user_env_from(pipeline: TrainingPipeline, stages: list[Stage]) -> list[dict[str, Any]]:
    return [v.dump() for v in [*(pipeline.spec.env_from or ()), *(v for s in stages for v in s.env_from or ())]]


def user_mounts(stages: list[Stage]) -> list[dict[str, Any]]:
    """The stages' `volumeMounts`, once per mount path."""
    mounts = {m.mount_path: m.dump() for s in stages for m in s.volume_mounts or ()}
    return list(mounts.values())


def user_volumes(pipeline: TrainingPipeline, stages: list[Stage]) -> list[dict[str, Any]]:
    """The `spec.volumes` these stages mount (only those: a pod never waits on a volume it does not use)."""
    used = {m.name for s in stages for m in s.volume_mounts or ()}
    return [v.dump() for v in pipeline.spec.volumes or () if v.name in used]
