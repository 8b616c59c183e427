"""`refinery-train prune`: apply a pipeline's checkpoint retention to one stage folder on the volume.

    refinery-train prune --stage-dir /workspace/ns/p/sft --keep-last 2 --keep-best evalLoss:min:1 \\
        [--protect PATH ...] [--dry-run]

Run by the short Job the operator starts when a stage succeeds (builders_retention.py); the
decision is `refinery.core.retention.checkpoints_to_delete`, the same pure function the
operator's tests exercise. Only complete checkpoints (marker present) are candidates; partial
folders are never touched. Each deletion removes the marker first, then the folder — the order
the trainer's own rotation uses — so an interrupted prune leaves a partial folder, never a
"complete" checkpoint with files missing. Running it twice deletes nothing the second time.

The last stdout line is one JSON object: {"stageDir", "kept": [...], "deleted": [...], "dryRun"}.
Exit codes: 0 done (also when the folder does not exist), 2 usage error. Imports no torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from refinery.api.v1alpha1 import CheckpointRetention, KeepBest
from refinery.core.retention import CheckpointInfo, checkpoints_to_delete

from . import checkpoints as ckpt
from .checkpoints import delete_checkpoint  # also this module's name for it (prune deletes checkpoints)

EXIT_USAGE = 2


def parse_keep_best(text: str) -> KeepBest:
    """`metric:mode:count` (mode and count optional: `evalLoss`, `evalAccuracy:max`, `loss:min:2`)."""
    metric, *rest = text.split(":")
    fields = {"metric": metric}
    if rest:
        fields["mode"] = rest[0]
    if len(rest) > 1:
        fields["count"] = int(rest[1])
    return KeepBest.model_validate(fields)


def scan(stage_dir: Path) -> list[CheckpointInfo]:
    """Every checkpoint folder of the stage, with the metrics its marker recorded."""
    found = []
    for path in ckpt.list_checkpoints(stage_dir):
        marker = ckpt.read_marker(path)
        attempt = path.parent.parent.name.removeprefix("attempt-")
        metrics = (marker or {}).get("metrics") or {}
        found.append(CheckpointInfo(
            path=str(path), step=ckpt.checkpoint_step(path) or 0, attempt=int(attempt) if attempt.isdigit() else 0,
            complete=marker is not None, metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        ))
    return found


def prune(stage_dir: Path, policy: CheckpointRetention, protected: list[str], dry_run: bool = False) -> dict:
    found = scan(stage_dir) if stage_dir.is_dir() else []
    doomed = checkpoints_to_delete(found, policy, protected)
    if not dry_run:
        for checkpoint in doomed:
            delete_checkpoint(checkpoint.path)
    gone = {c.path for c in doomed}
    return {
        "stageDir": str(stage_dir),
        "kept": [c.path for c in found if c.complete and c.path not in gone],
        "deleted": sorted(gone),
        "dryRun": dry_run,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="refinery-train prune", description="Delete old checkpoints of one stage.")
    parser.add_argument("--stage-dir", required=True, type=Path, help="the stage's folder on the volume")
    parser.add_argument("--keep-last", type=int, help="keep this many newest complete checkpoints")
    parser.add_argument("--keep-best", help="METRIC[:min|max[:COUNT]]: also keep the best by a marker metric")
    parser.add_argument("--protect", action="append", default=[], help="a path that must stay (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print what would go, delete nothing")
    args = parser.parse_args(argv)
    try:
        policy = CheckpointRetention(keep_last=args.keep_last,
                                     keep_best=parse_keep_best(args.keep_best) if args.keep_best else None)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        print(f"refinery-train prune: invalid policy: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE
    result = prune(args.stage_dir, policy, args.protect, args.dry_run)
    for path in result["deleted"]:
        print(f"{'would delete' if args.dry_run else 'deleted'} {path}")
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
