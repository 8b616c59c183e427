"""A real MLflow tracking server on 127.0.0.1 for tests: `mlflow server` (PyPI `mlflow`) with a
SQLite backend and artifacts proxied to a folder, as a team would run a small one.

    server = start_mlflow_server(tmp_path)
    client = server.client()      # mlflow's own client, reading back what the stages logged
    server.stop()
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 120  # cold imports of the server on a loaded 2-core machine


@dataclass
class MlflowServer:
    url: str
    process: subprocess.Popen
    log: Path

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.url)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(root: Path) -> MlflowServer:
    root.mkdir(parents=True, exist_ok=True)
    port, log = free_port(), root / "mlflow-server.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")],
        stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return MlflowServer(url, process, log)
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"mlflow server did not answer in {START_TIMEOUT_S} s: {log.read_text()[-2000:]}")
