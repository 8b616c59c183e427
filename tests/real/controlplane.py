"""A real Kubernetes control plane for tests and benchmarks (importable outside pytest).

`find_control_plane()` picks what starts one, in this order:
1. `$REFINERY_K8S_CONTROL_PLANE`: a launcher script with the `up DIR` / `down DIR` interface;
2. `$KUBEBUILDER_ASSETS`, when set: envtest's binary folder, started by envtest.py — etcd and
   kube-apiserver as `setup-envtest use 1.36 -p path` gives them, plus kube-controller-manager
   (setup-envtest has none: beside them, or named by `$TEST_ASSET_KUBE_CONTROLLER_MANAGER`).
   Without its job controller no Job ever gets a status, so a folder lacking it is not used: the
   reason says so, and how to get one;
3. `<repo>/../shared/k8s/control-plane` (CI clones the repository with `../shared` beside it).
Each brings etcd, kube-apiserver and kube-controller-manager with the same flags and leaves the
same files in DIR (`env` with K8S_API_URL, `run/<component>.pid`, `logs/<component>.log`).

`ControlPlane` wraps one running control plane: its kubeconfig (cluster-admin), and the faults the
tests inject — `restart_apiserver()` stops kube-apiserver and starts it again with the same
command line (same port, same etcd: clients keep their URL, as behind a real cluster's address),
and `compact_etcd()` compacts etcd to its current revision, so a watch resumed from an older
resourceVersion gets `410 Gone`.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .envtest import ASSETS_ENV, find_binaries

REPO = Path(__file__).resolve().parents[2]
LAUNCHER_ENV = "REFINERY_K8S_CONTROL_PLANE"
ENVTEST = Path(__file__).resolve().with_name("envtest.py")


def find_control_plane() -> tuple[Path | None, str]:
    """(the launcher, "") or (None, why there is none); the order is the module docstring's."""
    named = os.environ.get(LAUNCHER_ENV)
    if named:
        path = Path(named)
        return (path, "") if os.access(path, os.X_OK) else (None, f"${LAUNCHER_ENV}={named} is not an executable")
    if os.environ.get(ASSETS_ENV):
        binaries, why = find_binaries()
        return (ENVTEST, "") if binaries else (None, f"no Kubernetes control plane: {why}")
    path = REPO.parent / "shared" / "k8s" / "control-plane"
    if os.access(path, os.X_OK):
        return path, ""
    return None, (f"no Kubernetes control plane: {path} is missing; set ${ASSETS_ENV} to a folder with etcd, "
                  f"kube-apiserver and kube-controller-manager, or ${LAUNCHER_ENV} to a launcher with the same "
                  f"`up DIR`/`down DIR` interface")


@dataclass
class ControlPlane:
    launcher: Path
    folder: Path
    kubeconfig: Path | None = None

    @property
    def command(self) -> list[str]:
        """The launcher's command line, before `up DIR` / `down DIR` (envtest.py runs on this Python)."""
        return [sys.executable, str(self.launcher)] if self.launcher.suffix == ".py" else [str(self.launcher)]

    def up(self, timeout: float = 600) -> Path:
        result = subprocess.run([*self.command, "up", str(self.folder)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"control-plane up failed:\n{result.stderr[-4000:]}")
        self.kubeconfig = Path(result.stdout.strip().splitlines()[-1])
        return self.kubeconfig

    def down(self) -> None:
        subprocess.run([*self.command, "down", str(self.folder)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=120, check=False)

    @property
    def url(self) -> str:
        for line in (self.folder / "env").read_text().splitlines():
            if line.startswith("K8S_API_URL="):
                return line.split("=", 1)[1].strip("'\"")
        raise RuntimeError("no K8S_API_URL in env")

    # -- processes ------------------------------------------------------------------------------

    def pid(self, component: str) -> int:
        return int((self.folder / "run" / f"{component}.pid").read_text().split()[0])

    def rss_bytes(self, component: str) -> int:
        import psutil

        return psutil.Process(self.pid(component)).memory_info().rss

    def cpu_seconds(self, component: str) -> float:
        import psutil

        times = psutil.Process(self.pid(component)).cpu_times()
        return times.user + times.system

    def restart_apiserver(self, down_s: float = 2.0) -> None:
        """SIGTERM kube-apiserver, wait `down_s` with it gone, start the same command line again and
        wait until /readyz says ok. The pid files are updated so `down` still stops it."""
        pid = self.pid("kube-apiserver")
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        exe = os.readlink(f"/proc/{pid}/exe")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and _state(pid) not in ("Z", "X") and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(down_s)
        log = open(self.folder / "logs" / "kube-apiserver.log", "ab")  # noqa: SIM115 - kept by the child
        process = subprocess.Popen([a.decode() for a in argv], executable=exe, stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        (self.folder / "run" / "kube-apiserver.pid").write_text(f"{process.pid}\n")
        start = Path(f"/proc/{process.pid}/stat").read_text().rsplit(") ", 1)[1].split()[19]
        (self.folder / "run" / "kube-apiserver.id").write_text(f"{start} {exe}\n")
        self.wait_ready()

    def wait_ready(self, timeout: float = 120) -> None:
        import kubernetes.client
        import kubernetes.config

        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=configuration)
        deadline = time.monotonic() + timeout
        with kubernetes.client.ApiClient(configuration) as api:
            while True:
                try:
                    response = api.call_api("GET", f"{configuration.host}/readyz", _request_timeout=5)
                    response.read()
                    if response.status == 200:
                        return
                except Exception:  # noqa: BLE001 - not up yet: connection refused, 500 while starting
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("kube-apiserver did not become ready")
                time.sleep(0.2)

    # -- etcd -----------------------------------------------------------------------------------

    def etcd_url(self) -> str:
        argv = Path(f"/proc/{self.pid('kube-apiserver')}/cmdline").read_bytes().split(b"\0")
        flag = next(a.decode() for a in argv if a.startswith(b"--etcd-servers="))
        return flag.split("=", 1)[1].split(",")[0]

    def etcd_revision(self) -> int:
        answer = _post_json(f"{self.etcd_url()}/v3/kv/range", {"key": base64.b64encode(b"/").decode(), "limit": 1})
        return int(answer["header"]["revision"])

    def compact_etcd(self) -> int:
        """Compact etcd's history up to its current revision (what kube-apiserver does every 5
        minutes): a watch from an older resourceVersion is then answered `410 Gone`."""
        revision = self.etcd_revision()
        _post_json(f"{self.etcd_url()}/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except OSError:
        return "X"


def _post_json(url: str, body: dict) -> dict:
    """etcd's gRPC gateway (JSON over HTTP on its client URL)."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())
