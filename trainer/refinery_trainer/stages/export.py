"""export: the step `spec.export` adds after every stage — copy one stage's model, with a
generated model card, to a folder, `s3://` or `hf://`.

    refinery-train run --config stage.yaml      # stage.type: export (built by the planner)

The planner hands it the exported stage's model as `init_model`, every stage's output as
`models` and the pipeline's spec as `pipeline_spec` (the model card's lineage). It trains
nothing; its metrics are the files and bytes it wrote.
"""

from __future__ import annotations

import logging
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from refinery.api.v1alpha1 import PipelineSpec

from ..context import StageContext
from ..errors import StageError
from ..export.bundle import write_bundle
from ..export.card import Lineage, model_card
from ..export.publish import publish

log = logging.getLogger(__name__)


def refinery_version() -> str:
    try:
        return version("refinery")
    except PackageNotFoundError:
        return "unknown"


def export_model(pipeline: str, spec: PipelineSpec, stage: str, outputs: dict[str, str], data_root: Path,
                 destination: str, work_dir: Path, *, private: bool = True, volume_root: Path | None = None) -> tuple[dict[str, float], str]:
    """Bundle `stage`'s model with its card in `work_dir`, publish it; (files and bytes written, where).
    `data_root`: where the stages' data paths resolve (for the card's checksums); `volume_root`:
    where a relative destination folder does (default: the current folder)."""
    if stage not in outputs:
        raise StageError(f"export: stage {stage!r} has no model to export (outputs known: {', '.join(outputs) or 'none'})")
    lineage = Lineage.from_run(pipeline, spec, outputs, data_root)
    card = model_card(lineage, stage, refinery_version())
    bundle = work_dir / ".export-bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    files = write_bundle(Path(outputs[stage]), bundle, card)
    size = sum((bundle / f).stat().st_size for f in files)
    where = publish(bundle, destination, private=private, resolve=lambda p: _resolve(volume_root or Path.cwd(), p))
    shutil.rmtree(bundle, ignore_errors=True)
    log.info("exported %s (%d files, %d bytes) to %s", stage, len(files), size, where)
    return {"files": float(len(files)), "bytes": float(size)}, where


def _resolve(root: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def run(ctx: StageContext) -> dict[str, float]:
    if ctx.run.pipeline_spec is None:
        raise StageError("export: the run carries no pipeline spec (pipeline_spec)")
    spec = PipelineSpec.model_validate(ctx.run.pipeline_spec)
    export = spec.export
    outputs = {**(ctx.run.models or {}), export.stage: str(ctx.init_model_dir)}
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    metrics, ctx.output = export_model(ctx.run.pipeline, spec, export.stage, outputs, Path(ctx.run.data_root), export.to,
                           ctx.stage_dir, private=export.private,
                           volume_root=Path(ctx.run.volume_root) if ctx.run.volume_root else None)
    return metrics
