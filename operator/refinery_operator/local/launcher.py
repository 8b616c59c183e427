"""How local mode starts a stage process: warm, forked from a fork server that has already
imported the training libraries (refinery_trainer.warm), or cold, as `python -m refinery_trainer`.

Warm is the default on Linux, where it was measured: on two cores it saves each stage the
seconds its imports take (README, "Start-up"). `REFINERY_WARM_START=0` starts every stage cold, as
a plain child process; `=1` asks for warm starts elsewhere too (macOS forbids some libraries in a
forked child once they were loaded, so it is not the default there). Either way the runner
sees the same process: `poll()` gives None while it runs, then its exit code, or minus the
signal that ended it; `terminate()`, `kill()`, `wait(timeout)`.

The fork server starts with the environment of `refinery run` (what torch reads at import, such
as OMP_NUM_THREADS or ATEN_CPU_CAPABILITY, is that of the first run in a process); each stage
process then gets its own environment, as a cold one would.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import subprocess
import sys
from pathlib import Path

WARM_START_ENV = "REFINERY_WARM_START"


class ForkedProcess:
    """A stage process forked from the fork server, with the part of subprocess.Popen local mode uses."""

    def __init__(self, process: multiprocessing.process.BaseProcess):
        self._process = process

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(f"stage process {self.pid}", timeout or 0)
        return self._process.exitcode

    def terminate(self) -> None:
        self._process.terminate()

    def kill(self) -> None:
        self._process.kill()


class StageLauncher:
    def __init__(self, warm: bool | None = None):
        default = "1" if sys.platform == "linux" else "0"
        self.warm = os.environ.get(WARM_START_ENV, default) != "0" if warm is None else warm

    def warm_up(self) -> None:
        """Start the fork server now (it imports in the background), so the first stage finds it ready."""
        if self.warm:
            from refinery_trainer.warm import SERVER_MODULE

            multiprocessing.forkserver.set_forkserver_preload([SERVER_MODULE])
            multiprocessing.forkserver.ensure_running()

    def start(self, config: Path, log_path: Path, env: dict[str, str]) -> subprocess.Popen | ForkedProcess:
        """`refinery-train run --config <config>` with its output appended to `log_path`."""
        if self.warm:
            from refinery_trainer.warm import run_stage_process

            self.warm_up()
            process = multiprocessing.get_context("forkserver").Process(
                target=run_stage_process, args=(str(config), str(log_path), env), name=config.stem)
            process.start()
            return ForkedProcess(process)
        with open(log_path, "ab") as log:
            return subprocess.Popen([sys.executable, "-m", "refinery_trainer", "run", "--config", str(config)],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
