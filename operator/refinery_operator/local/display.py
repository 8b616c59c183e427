"""What local mode shows a person: a progress bar per stage, and a summary table at the end."""

from __future__ import annotations

import sys

from refinery.api.v1alpha1 import Phase, PipelineStatus
from refinery.client.render import eval_table, summary_table  # noqa: F401 - the summary local mode prints at the end
from refinery.core.eta import words



class ProgressDisplay:
    """One tqdm bar per stage on a terminal; elsewhere (CI, a log file) one line per event."""

    def __init__(self, stages: list[str], enabled: bool = True, stream=None) -> None:
        self._stream = stream or sys.stderr
        self._enabled = enabled
        self._bars = {}
        self._seen: dict[str, tuple] = {}
        if not enabled or not self._stream.isatty():
            return
        from tqdm import tqdm

        width = max(len(s) for s in stages)
        for position, name in enumerate(stages):
            self._bars[name] = tqdm(
                total=1000, position=position, desc=f"{name:<{width}}", file=self._stream, leave=True,
                bar_format="{desc} {bar} {percentage:3.0f}% {postfix}", dynamic_ncols=True,
            )

    def update(self, status: PipelineStatus) -> None:
        if not self._enabled:
            return
        for stage in status.stages:
            step = f"step {stage.step}/{stage.max_steps}" if stage.max_steps else ""
            if stage.phase == Phase.running and stage.estimated_remaining_seconds is not None:
                step = f"{step} eta {words(stage.estimated_remaining_seconds)}".strip()
            bar = self._bars.get(stage.name)
            if bar is not None:
                bar.n = int(1000 * (1.0 if stage.phase == Phase.succeeded else stage.progress))
                bar.set_postfix_str(f"{stage.phase} {step}".strip(), refresh=False)
                bar.refresh()
                continue
            ckpt = stage.last_checkpoint.step if stage.last_checkpoint else None
            event = (stage.phase, stage.attempt, ckpt)
            if self._seen.get(stage.name) != event:
                self._seen[stage.name] = event
                saved = f", checkpoint at step {ckpt}" if ckpt is not None else ""
                print(f"{stage.name}: {stage.phase} (attempt {stage.attempt}{saved}) {step}".rstrip(), file=self._stream)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
