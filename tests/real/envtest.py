#!/usr/bin/env python3
"""A control plane from an envtest folder: etcd, kube-apiserver and kube-controller-manager.

    KUBEBUILDER_ASSETS=$(setup-envtest use 1.36 -p path) python tests/real/envtest.py up DIR
    python tests/real/envtest.py down DIR

The same `up DIR` / `down DIR` interface as `../shared/k8s/control-plane`, and the same files in
DIR, so `ControlPlane` (controlplane.py) drives either: `up` prints the cluster-admin kubeconfig
last; DIR/env holds `KUBECONFIG=`, `K8S_API_URL=` and `KUBEBUILDER_ASSETS=`; DIR/pki the CA,
certificates and ServiceAccount signing key; DIR/etcd the data; DIR/logs/<component>.log and
DIR/run/<component>.pid (with <component>.id: start time and executable) each process. `down`
stops exactly the processes those files name — a pid whose start time no longer matches is
someone else's and is left alone — and deletes nothing. `up` on a DIR brought down restarts it
with its data. Importable outside pytest: stdlib, plus `cryptography` when installed (else the
`openssl` command makes the certificates).

Binaries follow controller-runtime's envtest (`BinPathFinder`): `$TEST_ASSET_<NAME>` names one
binary, else it is `$KUBEBUILDER_ASSETS/<name>`. setup-envtest ships etcd and kube-apiserver but no
kube-controller-manager, whose controllers (job, garbage collector, serviceaccount, ...) the
real-API tests need: put the one of the same release beside them (a Kubernetes server release
tarball has it in kubernetes/server/bin/) or name it with $TEST_ASSET_KUBE_CONTROLLER_MANAGER.
`../shared/k8s/control-plane binaries` prints a folder that has all three.

The flags are the shared launcher's: client-certificate auth, Node+RBAC authorization,
ServiceAccount tokens signed by DIR/pki/sa.key (TokenRequest), the default admission plugins,
the front-proxy (aggregation) certificates, and every default controller with per-controller
ServiceAccount credentials. `up` returns once /readyz says ok and the controllers have published
the `default` ServiceAccount and `kube-root-ca.crt` in `default`. REFINERY_K8S_START_TIMEOUT (s
per component, default 120) and REFINERY_K8S_STOP_TIMEOUT (TERM to KILL, default 20) as there.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import random
import re
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

if __package__:
    from .pki import make_pki
else:  # run as a script: tests/real/envtest.py up DIR
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from pki import make_pki

ASSETS_ENV = "KUBEBUILDER_ASSETS"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager")
# An OpenShift addition (the shared launcher's binaries are OpenShift's fork): it stays off there.
# Upstream's kube-controller-manager refuses a name it does not know, so it is named only when known.
OPENSHIFT_ONLY_CONTROLLER = "service-ca-certificate-publisher-controller"
GET_KUBE_CONTROLLER_MANAGER = (
    "setup-envtest does not ship it: copy kube-controller-manager of the same release into that folder "
    "(from kubernetes/server/bin/ of https://dl.k8s.io/<version>/kubernetes-server-linux-amd64.tar.gz) "
    "or name it with $TEST_ASSET_KUBE_CONTROLLER_MANAGER; `../shared/k8s/control-plane binaries` "
    "prints a folder that has all three")


def asset_variable(name: str) -> str:
    """envtest's per-binary override: kube-apiserver -> TEST_ASSET_KUBE_APISERVER."""
    return "TEST_ASSET_" + re.sub(r"[^A-Z0-9]+", "_", name.upper())


def find_binaries(environ: dict[str, str] | None = None) -> tuple[dict[str, Path] | None, str]:
    """({component: executable}, "") or (None, why not), from $KUBEBUILDER_ASSETS and $TEST_ASSET_*."""
    environ = os.environ if environ is None else environ
    folder = environ.get(ASSETS_ENV, "")
    found, missing = {}, []
    for name in COMPONENTS:
        path = Path(environ.get(asset_variable(name)) or Path(folder) / name)
        if path.is_file() and os.access(path, os.X_OK):
            found[name] = path.resolve()
        else:
            missing.append(name)
    if not missing:
        return found, ""
    where = f"${ASSETS_ENV}={folder}" if folder else f"${ASSETS_ENV} is not set and"
    why = f"{where} has no executable {' or '.join(missing)}"
    if missing == ["kube-controller-manager"]:
        why = (f"${ASSETS_ENV}={folder} has etcd and kube-apiserver but no kube-controller-manager, whose "
               f"job controller the real-API tests need; {GET_KUBE_CONTROLLER_MANAGER}")
    return None, why


# ---------------------------------------------------------------- processes (DIR/run, DIR/logs)

def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (clock ticks after boot): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if stat[0] in "ZXx" else stat[19]


def _ours(folder: Path, name: str) -> int | None:
    """The pid in run/NAME.pid when it is still the process started there, else None."""
    try:
        pid = int((folder / "run" / f"{name}.pid").read_text().split()[0])
        start = (folder / "run" / f"{name}.id").read_text().split()[0]
    except (OSError, ValueError, IndexError):
        return None
    return pid if _start_time(pid) == start else None


def _launch(folder: Path, name: str, argv: list[str]) -> subprocess.Popen:
    with open(folder / "logs" / f"{name}.log", "ab") as log:
        log.write(f"=== {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {name}\n".encode())
        log.flush()
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # close_fds: holds no pipe of the caller's
    (folder / "run" / f"{name}.pid").write_text(f"{process.pid}\n")
    (folder / "run" / f"{name}.id").write_text(f"{_start_time(process.pid) or 0} {argv[0]}\n")
    return process


def _wait_gone(pids: list[int], starts: dict[int, str | None], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while True:
        left = [pid for pid in pids if _start_time(pid) == starts[pid]]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def down(folder: Path) -> list[str]:
    """Stop what `up(folder)` started: kube-controller-manager and kube-apiserver, then etcd;
    SIGTERM, SIGKILL after REFINERY_K8S_STOP_TIMEOUT. Idempotent; returns what it stopped."""
    folder = Path(folder)
    stop_timeout = float(os.environ.get("REFINERY_K8S_STOP_TIMEOUT", "20"))
    stopped = []
    for group in (("kube-controller-manager", "kube-apiserver"), ("etcd",)):
        pids = {name: pid for name in group if (pid := _ours(folder, name)) is not None}
        starts = {pid: _start_time(pid) for pid in pids.values()}
        for name, pid in pids.items():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            stopped.append(f"{name} (pid {pid})")
        for pid in _wait_gone(list(pids.values()), starts, stop_timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone([pid], starts, 5)
    for name in COMPONENTS:
        for suffix in ("pid", "id"):
            (folder / "run" / f"{name}.{suffix}").unlink(missing_ok=True)
    return stopped


# ---------------------------------------------------------------- waiting (TLS + HTTP)

def free_ports(count: int) -> list[int]:
    """Ports below the usual ephemeral range, away from Kubernetes' well-known ones (the launcher's choice)."""
    avoid, rnd, ports = {2379, 2380, 6443, 10250, 10257, 10259}, random.SystemRandom(), []
    while len(ports) < count:
        port = rnd.randrange(20000, 32000)
        if port in avoid or port in ports:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    return ports


def _openers(pki: Path) -> dict[str, urllib.request.OpenerDirector]:
    admin = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    admin.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # kube-controller-manager's self-signed healthz
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
    return {mode: urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
            for mode, context in (("plain", None), ("admin", admin), ("insecure", insecure))}


def _problem(opener: urllib.request.OpenerDirector, url: str, want: str) -> str | None:
    try:
        with opener.open(url, timeout=5) as response:
            body = response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        body = error.read().decode(errors="replace")
        failed = [line for line in body.splitlines() if line.startswith("[-]")]
        return f"HTTP {error.code} from {url}: {'; '.join(failed) or body.strip()[:300]}"
    except (OSError, http.client.HTTPException) as error:  # refused, TLS not up yet, timed out
        return f"{url}: {getattr(error, 'reason', error)}"
    return None if want in body else f"{url} answered {body[:200]!r}"


class StartFailed(RuntimeError):
    def __init__(self, name: str, why: str, log: Path, clash: bool = False) -> None:
        lines = log.read_text(errors="replace").rsplit("\n=== ", 1)[-1].splitlines()[-15:] if log.exists() else []
        super().__init__(f"{name} {why} (log: {log})\n" + "\n".join(f"  | {line[:300]}" for line in lines))
        self.clash = clash or any("address already in use" in line for line in lines)


def _await(process: subprocess.Popen, name: str, log: Path, checks: list[tuple], timeout: float) -> None:
    """Each (opener, url, wanted text) in turn, until the deadline; StartFailed if the process exits."""
    deadline = time.monotonic() + timeout
    for opener, url, want in checks:
        while (why := _problem(opener, url, want)) is not None:
            if process.poll() is not None:
                raise StartFailed(name, f"exited (status {process.returncode}) during startup: {why}", log)
            if time.monotonic() > deadline:
                raise StartFailed(name, f"not ready after {timeout:.0f}s: {why}", log)
            time.sleep(0.2)


# ---------------------------------------------------------------- the three components

def _kubeconfig(path: Path, server: str, pki: Path, cert: str, user: str) -> Path:
    def data(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    config = {  # JSON is YAML: every kubeconfig reader takes it
        "apiVersion": "v1", "kind": "Config", "current-context": "refinery-k8s",
        "clusters": [{"name": "refinery-k8s", "cluster": {"server": server, "certificate-authority-data": data("ca.crt")}}],
        "users": [{"name": user, "user": {"client-certificate-data": data(f"{cert}.crt"), "client-key-data": data(f"{cert}.key")}}],
        "contexts": [{"name": "refinery-k8s", "context": {"cluster": "refinery-k8s", "user": user}}],
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path


def etcd_argv(etcd: Path, folder: Path, client: int, peer: int) -> list[str]:
    client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    return [str(etcd), "--name=default", f"--data-dir={folder / 'etcd'}", "--log-level=warn",
            f"--listen-client-urls={client_url}", f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}", "--unsafe-no-fsync"]  # test data: no fsync, as envtest


def apiserver_argv(apiserver: Path, pki: Path, port: int, etcd_port: int) -> list[str]:
    k = str(pki)
    return [str(apiserver), "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={port}",
            f"--cert-dir={k}", f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--tls-cert-file={k}/apiserver.crt", f"--tls-private-key-file={k}/apiserver.key", f"--client-ca-file={k}/ca.crt",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={k}/sa.pub", f"--service-account-signing-key-file={k}/sa.key",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true",
            "--service-cluster-ip-range=10.0.0.0/24", "--endpoint-reconciler-type=none",
            f"--kubelet-client-certificate={k}/apiserver-kubelet-client.crt",
            f"--kubelet-client-key={k}/apiserver-kubelet-client.key",
            f"--requestheader-client-ca-file={k}/front-proxy-ca.crt", "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={k}/front-proxy-client.crt", f"--proxy-client-key-file={k}/front-proxy-client.key",
            "--enable-aggregator-routing=true", "--shutdown-watch-termination-grace-period=2s", "--profiling=false", "--v=1"]


def controllers_flag(binary: Path) -> str:
    """Every default controller, less the OpenShift-only one where the binary has it (its --help lists them)."""
    listed = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=60)
    known = OPENSHIFT_ONLY_CONTROLLER in listed.stdout + listed.stderr
    return f"--controllers=*,-{OPENSHIFT_ONLY_CONTROLLER}" if known else "--controllers=*"


def controller_manager_argv(binary: Path, pki: Path, port: int, controllers: str) -> list[str]:
    k, kubeconfig = str(pki), str(pki / "controller-manager.kubeconfig")
    return [str(binary), f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}", "--bind-address=127.0.0.1", f"--secure-port={port}",
            "--use-service-account-credentials=true", f"--service-account-private-key-file={k}/sa.key",
            f"--root-ca-file={k}/ca.crt", f"--cluster-signing-cert-file={k}/ca.crt", f"--cluster-signing-key-file={k}/ca.key",
            controllers, "--leader-elect=false", "--profiling=false", "--v=1"]


def _start(folder: Path, name: str, argv_for: Callable[..., list[str]], checks_for: Callable[..., list[tuple]],
           ports: int, timeout: float) -> list[int]:
    """Launch NAME on fresh ports until it answers its checks (a port taken meanwhile: new ones, 3 tries)."""
    log, attempt = folder / "logs" / f"{name}.log", 1
    while True:
        chosen = free_ports(ports)
        process = _launch(folder, name, argv_for(*chosen))
        try:
            _await(process, name, log, checks_for(*chosen), timeout)
            return chosen
        except StartFailed as failure:
            process.kill()
            process.wait()
            if not failure.clash or attempt == 3:
                raise
            attempt += 1


def _delete(opener: urllib.request.OpenerDirector, url: str) -> None:
    try:
        opener.open(urllib.request.Request(url, method="DELETE"), timeout=10).close()
    except urllib.error.HTTPError as error:
        if error.code != 404:
            raise


def up(folder: Path, binaries: dict[str, Path] | None = None) -> Path:
    """Start the three components with their files in `folder`; the admin kubeconfig's path."""
    if binaries is None:
        binaries, why = find_binaries()
        if binaries is None:
            raise RuntimeError(why)
    folder = Path(folder).resolve()
    running = [f"{name} (pid {pid})" for name in COMPONENTS if (pid := _ours(folder, name)) is not None]
    if running:
        raise RuntimeError(f"{', '.join(running)} already running in {folder}; run: envtest.py down {folder}")
    timeout = float(os.environ.get("REFINERY_K8S_START_TIMEOUT", "120"))
    old_umask = os.umask(0o077)
    try:
        for sub in ("logs", "run", "etcd"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        restart = (folder / "etcd" / "member").is_dir()
        pki = make_pki(folder / "pki")
        openers = _openers(pki)
        try:
            return _up(folder, binaries, pki, openers, restart, timeout)
        except BaseException:
            down(folder)  # also on Ctrl-C / SIGTERM: stop what was started
            raise
    finally:
        os.umask(old_umask)


def _up(folder: Path, binaries: dict[str, Path], pki: Path, openers: dict, restart: bool, timeout: float) -> Path:
    def etcd(client: int, peer: int) -> list[str]:
        return etcd_argv(binaries["etcd"], folder, client, peer)

    def etcd_ready(client: int, peer: int) -> list[tuple]:
        return [(openers["plain"], f"http://127.0.0.1:{client}/health", '"health":"true"')]

    etcd_port, _ = _start(folder, "etcd", etcd, etcd_ready, 2, timeout)

    def apiserver(port: int) -> list[str]:
        return apiserver_argv(binaries["kube-apiserver"], pki, port, etcd_port)

    def apiserver_ready(port: int) -> list[tuple]:
        return [(openers["admin"], f"https://127.0.0.1:{port}/readyz", "ok")]

    (api_port,) = _start(folder, "kube-apiserver", apiserver, apiserver_ready, 1, timeout)
    server = f"https://127.0.0.1:{api_port}"
    kubeconfig = _kubeconfig(folder / "kubeconfig", server, pki, "admin", "refinery-k8s-admin")
    _kubeconfig(pki / "controller-manager.kubeconfig", server, pki, "controller-manager", "system:kube-controller-manager")
    default = f"{server}/api/v1/namespaces/default"
    if restart:  # the objects awaited below exist already: their reappearance shows the controllers run
        _delete(openers["admin"], f"{default}/configmaps/kube-root-ca.crt")
    controllers = controllers_flag(binaries["kube-controller-manager"])

    def controller_manager(port: int) -> list[str]:
        return controller_manager_argv(binaries["kube-controller-manager"], pki, port, controllers)

    def controllers_ready(port: int) -> list[tuple]:
        # ready for tests once the ServiceAccount and root-CA publishers have run: a new namespace
        # then gets its `default` ServiceAccount and kube-root-ca.crt at once
        return [(openers["insecure"], f"https://127.0.0.1:{port}/healthz", "ok"),
                (openers["admin"], f"{default}/serviceaccounts/default", '"default"'),
                (openers["admin"], f"{default}/configmaps/kube-root-ca.crt", '"ca.crt"')]

    _start(folder, "kube-controller-manager", controller_manager, controllers_ready, 1, timeout)
    assets = os.environ.get(ASSETS_ENV) or str(binaries["kube-apiserver"].parent)
    (folder / "env").write_text(f"KUBECONFIG={shlex.quote(str(kubeconfig))}\nK8S_API_URL={server}\n"
                                f"KUBEBUILDER_ASSETS={shlex.quote(assets)}\n")
    return kubeconfig


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("up", "down"):
        print("usage: envtest.py up DIR | down DIR   (binaries from $KUBEBUILDER_ASSETS)", file=sys.stderr)
        return 2
    command, folder = argv
    if command == "down":
        stopped = down(Path(folder))
        print(f"envtest: stopped {' '.join(stopped)}" if stopped else f"envtest: nothing running in {folder}", file=sys.stderr)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # -> up()'s cleanup
    started = time.monotonic()
    try:
        kubeconfig = up(Path(folder))
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        print(f"envtest: error: {error}", file=sys.stderr)
        return 1
    print(f"envtest: up in {time.monotonic() - started:.1f}s, env in {Path(folder).resolve() / 'env'}", file=sys.stderr)
    print(kubeconfig)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
