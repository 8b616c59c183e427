"""A stand-in for `refinery-train run --config FILE`: quick, torch-free, same contract.

It reads the StageRun, "trains" a few steps, writes complete checkpoints (marker last) under
`attempt-<n>/checkpoints/`, reports progress and checkpoints through the trainer's own
`Reporter` (so the ConfigMap patch path is the real one), resumes from the newest complete
checkpoint of the stage, then writes `model/` and `result.json` and reports success.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import yaml

from refinery.api.run import StageRun
from refinery.api.v1alpha1 import Checkpoint
from refinery_trainer import checkpoints as ckpt
from refinery_trainer.report import Reporter

STEP_S = 0.05
# `data.path: data/nan-loss.jsonl` makes the stage fail at step 3 as the trainer would (exit 1).
FAILURES = {
    "nan-loss": ("loss became NaN at step 3: lower training.learningRate or check the data", "NanLoss"),
    "bad-data": ("data/bad-data.jsonl line 3: missing field 'completion' (rename it with data.completionField)", "BadData"),
}


def main() -> int:
    if sys.argv[1:2] != ["run"]:  # `prune`, `launch` …: the real refinery-train (torch-free too)
        from refinery_trainer.cli import main as refinery_train

        return refinery_train(sys.argv[1:])
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["run"])
    parser.add_argument("--config", required=True)
    run = StageRun.model_validate(yaml.safe_load(Path(parser.parse_args().config).read_text()))
    stage_dir = Path(run.stage_dir)
    max_steps = run.stage.training.max_steps or 6
    save = run.stage.training.save_steps
    done = ckpt.complete_checkpoints(stage_dir)
    start = ckpt.checkpoint_step(done[0]) if done else 0
    reporter = Reporter.for_run(run)
    if done:
        reporter.record = reporter.record.model_copy(update={"resumed_from": Checkpoint(step=start, path=str(done[0]))})
    reporter.update(force=True, step=start, max_steps=max_steps)
    say(f"stage {run.stage.name!r} attempt {run.attempt}: " + (f"resuming from step {start}" if done else "starting")
        + f", {max_steps} steps (fake stage)")
    count = len(done)
    stop = []  # SIGTERM (suspend, eviction notice): checkpoint after this step, then exit 143 like the trainer
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    fail = FAILURES.get(Path(run.stage.data.path).stem) if run.stage.data else None  # eval and export read no data
    for step in range(start + 1, max_steps + 1):
        time.sleep(STEP_S)
        loss = 1.0 / step
        if fail and step == 3:  # the data names a failure to play: report it as the trainer does, exit 1
            reporter.failed(*fail)
            return 1
        if step % save == 0 or step == max_steps or stop:
            path = ckpt.attempt_dir(stage_dir, run.attempt) / "checkpoints" / f"checkpoint-{step}"
            path.mkdir(parents=True, exist_ok=True)
            (path / "weights.json").write_text(json.dumps({"step": step}))
            ckpt.write_marker(path, step, {"loss": loss})
            count += 1
            reporter.checkpoint(Checkpoint(step=step, path=str(path), time=ckpt.now_rfc3339()), count, {"loss": loss})
            say(f"step {step}/{max_steps} loss {loss:.4f}: checkpoint saved")
            if stop:
                say(f"SIGTERM: stopped after the checkpoint at step {step}")
                return 143
        else:
            reporter.update(step=step, metrics={"loss": loss})
    model = stage_dir / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text(json.dumps({"stage": run.stage.name, "init": run.init_model}))
    metrics = {"loss": 1.0 / max_steps, "evalLoss": 1.5 / max_steps}
    ckpt.atomic_write_text(stage_dir / "result.json", json.dumps({"metrics": metrics, "output": str(model)}))
    reporter.succeeded(metrics, str(model), step=max_steps)
    say(f"stage {run.stage.name!r} succeeded in {max_steps} steps: {model}")
    return 0


def say(line: str) -> None:
    """A line of the pod's log (`kubectl logs`, `refinery logs`), as the trainer logs its progress."""
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
