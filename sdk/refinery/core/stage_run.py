"""Turn a planned launch into the `StageRun` a stage process reads (cluster and local alike)."""

from __future__ import annotations

from ..api.run import ConfigMapReporter, FileReporter, StageRun
from pathlib import PurePosixPath

from ..api.evaluation import EXPORT_STAGE
from ..api.v1alpha1 import TrainingPipeline
from .judging import circular_footnotes
from .naming import stage_dir
from .plan import Launch
from .sources import stage_source_paths


def volume_root(pipeline_root: str, namespace: str | None) -> str:
    """The inverse of naming.pipeline_root: `<volume>/<namespace>/<pipeline>` -> `<volume>`."""
    return str(PurePosixPath(pipeline_root).parents[1 if namespace else 0])


def build_stage_run(
    pipeline: TrainingPipeline,
    launch: Launch,
    pipeline_root: str,
    data_root: str,
    reporter: FileReporter | ConfigMapReporter | None,
    image: str | None = None,
) -> StageRun:
    stage = pipeline.spec.stage(launch.stage)
    return StageRun(
        pipeline=pipeline.metadata.name,
        namespace=pipeline.metadata.namespace,
        stage=stage,
        attempt=launch.attempt,
        stage_dir=stage_dir(pipeline_root, launch.stage, launch.run),
        data_root=data_root,
        init_model=launch.inputs.model if launch.inputs else None,
        reward_model=launch.inputs.reward_model if launch.inputs else None,
        models=launch.inputs.models if launch.inputs else None,
        pipeline_spec=pipeline.spec.dump() if launch.stage == EXPORT_STAGE else None,
        volume_root=volume_root(pipeline_root, pipeline.metadata.namespace) if launch.stage == EXPORT_STAGE else None,
        circular=(circular_footnotes(pipeline.spec, stage.name) or None) if stage.eval_ is not None else None,
        reporter=reporter,
        sources=stage_source_paths(stage, pipeline_root),
        tracking=pipeline.spec.tracking,
        image=image,
    )
