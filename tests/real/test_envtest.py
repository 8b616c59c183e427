"""A control plane started from a `KUBEBUILDER_ASSETS` folder (envtest.py), for real.

The folder is the one `../shared/k8s/control-plane binaries` prints (etcd, kube-apiserver and
kube-controller-manager v1.36.2, setup-envtest's layout plus the controller-manager). Started in a
tmp folder through `find_control_plane()` and `ControlPlane`, as the session fixture would:

- /readyz says ok; a new Namespace gets its `default` ServiceAccount (serviceaccount controller);
- a Job gets its pod from the real job controller, which also writes the Job's status;
- a TokenRequest token authenticates as its ServiceAccount, and RBAC refuses it what it was not
  granted;
- ControlPlane's faults work on it (rss_bytes, compact_etcd, restart_apiserver), and `down`
  stops every process it started — the restarted kube-apiserver too;
- a folder with etcd and kube-apiserver only (what setup-envtest gives) is refused with a reason
  that names kube-controller-manager and where to get it.

No launcher beside the repository -> skipped with one reason; under CI=true failed instead.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import kubernetes.client
import kubernetes.config
import pytest
from kubernetes.client.exceptions import ApiException

from .conftest import unavailable
from .controlplane import ENVTEST, LAUNCHER_ENV, REPO, ControlPlane, find_control_plane
from .envtest import ASSETS_ENV, COMPONENTS, _start_time, asset_variable
from .harness import kubeconfig_parts, token_kubeconfig

pytestmark = pytest.mark.timeout(180)
LAUNCHER = REPO.parent / "shared" / "k8s" / "control-plane"


@pytest.fixture(scope="module")
def assets() -> Path:
    """The launcher's unpacked binaries: a KUBEBUILDER_ASSETS folder with all three."""
    if not os.access(LAUNCHER, os.X_OK):
        unavailable(f"no Kubernetes binaries: {LAUNCHER} is missing (its `binaries` command gives the folder)")
    out = subprocess.run([str(LAUNCHER), "binaries"], capture_output=True, text=True, timeout=300, check=True)
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def plane(assets: Path, tmp_path_factory) -> ControlPlane:
    with pytest.MonkeyPatch.context() as env:
        env.delenv(LAUNCHER_ENV, raising=False)
        env.setenv(ASSETS_ENV, str(assets))
        for name in COMPONENTS:
            env.delenv(asset_variable(name), raising=False)
        launcher, why = find_control_plane()
        assert (launcher, why) == (ENVTEST, "")
        control_plane = ControlPlane(launcher, tmp_path_factory.mktemp("envtest"))
        try:
            started = time.monotonic()
            control_plane.up(timeout=300)
            control_plane.up_seconds = time.monotonic() - started
            yield control_plane
        finally:
            control_plane.down()


def api_client(kubeconfig: Path) -> kubernetes.client.ApiClient:
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return kubernetes.client.ApiClient(configuration)


@pytest.fixture(scope="module")
def admin(plane: ControlPlane) -> kubernetes.client.ApiClient:
    with api_client(plane.kubeconfig) as client:
        yield client


def poll(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)
    return value


def read_or_none(read):
    try:
        return read()
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def test_the_api_server_is_ready_and_files_are_the_launchers(plane: ControlPlane, admin):
    response = admin.call_api("GET", f"{admin.configuration.host}/readyz", _request_timeout=10)
    assert (response.status, response.read()) == (200, b"ok")
    assert plane.url == admin.configuration.host.rstrip("/")
    for name in COMPONENTS:
        assert (plane.folder / "logs" / f"{name}.log").stat().st_size > 0
        assert plane.rss_bytes(name) > 10 * 2**20, name
    assert plane.up_seconds < 60


def test_a_namespace_gets_its_default_service_account(admin):
    core = kubernetes.client.CoreV1Api(admin)
    core.create_namespace({"metadata": {"name": "envtest-sa"}})
    account = poll(lambda: read_or_none(lambda: core.read_namespaced_service_account("default", "envtest-sa")),
                   30, "the default ServiceAccount")
    assert account.metadata.name == "default"
    poll(lambda: read_or_none(lambda: core.read_namespaced_config_map("kube-root-ca.crt", "envtest-sa")),
         30, "kube-root-ca.crt")


def test_the_job_controller_creates_the_jobs_pod(admin):
    core, batch = kubernetes.client.CoreV1Api(admin), kubernetes.client.BatchV1Api(admin)
    core.create_namespace({"metadata": {"name": "envtest-job"}})
    poll(lambda: read_or_none(lambda: core.read_namespaced_service_account("default", "envtest-job")), 30, "default SA")
    job = batch.create_namespaced_job("envtest-job", {
        "metadata": {"name": "hello"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox", "command": ["true"]}]}}}})
    pods = poll(lambda: core.list_namespaced_pod("envtest-job", label_selector="job-name=hello").items,
                30, "the job controller to create the pod")
    (pod,) = pods
    (owner,) = pod.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid, owner.controller) == ("Job", "hello", job.metadata.uid, True)
    assert pod.status.phase == "Pending"  # no scheduler, no kubelet: nobody runs it
    poll(lambda: batch.read_namespaced_job("hello", "envtest-job").status.active == 1, 30, "the Job's status.active")


def test_a_token_request_token_authenticates_and_rbac_limits_it(plane: ControlPlane, admin, tmp_path):
    core = kubernetes.client.CoreV1Api(admin)
    core.create_namespace({"metadata": {"name": "envtest-token"}})
    poll(lambda: read_or_none(lambda: core.read_namespaced_service_account("default", "envtest-token")), 30, "default SA")
    token = core.create_namespaced_service_account_token(
        "default", "envtest-token", {"spec": {"expirationSeconds": 600}}).status.token
    server, ca = kubeconfig_parts(plane.kubeconfig)
    with api_client(token_kubeconfig(tmp_path / "sa.kubeconfig", server, ca, token, "envtest-token")) as client:
        review = kubernetes.client.AuthenticationV1Api(client).create_self_subject_review({})
        assert review.status.user_info.username == "system:serviceaccount:envtest-token:default"
        with pytest.raises(ApiException) as refused:
            kubernetes.client.CoreV1Api(client).list_namespaced_secret("envtest-token")
        assert refused.value.status == 403


def test_faults_work_and_down_stops_every_process(plane: ControlPlane, admin):
    assert plane.compact_etcd() > 1
    before = plane.pid("kube-apiserver")
    plane.restart_apiserver(down_s=0.5)
    assert plane.pid("kube-apiserver") != before
    kubernetes.client.CoreV1Api(admin).list_namespace()  # the same URL and credentials work again
    pids = {name: plane.pid(name) for name in COMPONENTS}
    starts = {name: _start_time(pid) for name, pid in pids.items()}
    assert all(starts.values()), starts
    started = time.monotonic()
    plane.down()
    assert time.monotonic() - started < 30
    still = {name: pid for name, pid in pids.items() if _start_time(pid) == starts[name]}
    assert not still, f"still running after down: {still}"
    assert not list((plane.folder / "run").glob("*.pid"))


def test_a_folder_without_kube_controller_manager_is_refused_with_how_to_get_it(assets: Path, tmp_path, monkeypatch):
    for name in ("etcd", "etcd-server", "kube-apiserver"):  # setup-envtest's layout
        (tmp_path / name).symlink_to(assets / name)
    monkeypatch.delenv(LAUNCHER_ENV, raising=False)
    monkeypatch.setenv(ASSETS_ENV, str(tmp_path))
    monkeypatch.delenv(asset_variable("kube-controller-manager"), raising=False)
    launcher, why = find_control_plane()
    assert launcher is None
    assert f"$KUBEBUILDER_ASSETS={tmp_path} has etcd and kube-apiserver but no kube-controller-manager" in why
    assert "kubernetes-server-linux-amd64.tar.gz" in why and "TEST_ASSET_KUBE_CONTROLLER_MANAGER" in why
    assert "control-plane binaries" in why
    # and the starter itself refuses it before starting anything
    up = subprocess.run([*ControlPlane(ENVTEST, tmp_path / "cp").command, "up", str(tmp_path / "cp")],
                        capture_output=True, text=True, timeout=60)
    assert up.returncode == 1 and "no kube-controller-manager" in up.stderr
    assert not (tmp_path / "cp" / "run").exists()
