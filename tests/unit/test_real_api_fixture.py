"""The real-API layer's fixture: which control plane it starts (the launcher, a KUBEBUILDER_ASSETS
folder, or none with one reason), the certificates envtest.py makes, and that a missing control
plane skips locally but fails under CI=true."""

from __future__ import annotations

import shutil
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.real.conftest import unavailable
from tests.real.controlplane import ENVTEST, LAUNCHER_ENV, REPO, find_control_plane
from tests.real.envtest import ASSETS_ENV, COMPONENTS, asset_variable
from tests.real.pki import CERTIFICATES, make_pki

SHARED = REPO.parent / "shared" / "k8s" / "control-plane"


@pytest.fixture()
def clean_env(monkeypatch):
    for name in (LAUNCHER_ENV, ASSETS_ENV, *map(asset_variable, COMPONENTS)):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def fake_binaries(folder, names=COMPONENTS):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("#!/bin/sh\n")
        (folder / name).chmod(0o755)
    return folder


def test_the_launcher_beside_the_repository_is_found(clean_env):
    launcher, why = find_control_plane()
    if SHARED.exists():
        assert (launcher, why) == (SHARED, "")
    else:
        assert launcher is None and str(SHARED) in why and ASSETS_ENV in why


def test_a_named_launcher_that_is_missing_is_reported(clean_env, tmp_path):
    clean_env.setenv(LAUNCHER_ENV, str(tmp_path / "nowhere"))
    launcher, why = find_control_plane()
    assert launcher is None and "nowhere" in why and "not an executable" in why


def test_kubebuilder_assets_comes_after_the_named_launcher_and_before_the_shared_one(clean_env, tmp_path):
    clean_env.setenv(ASSETS_ENV, str(fake_binaries(tmp_path / "assets")))
    assert find_control_plane() == (ENVTEST, "")
    named = fake_binaries(tmp_path / "bin", ["launcher"]) / "launcher"
    clean_env.setenv(LAUNCHER_ENV, str(named))
    assert find_control_plane() == (named, "")


def test_assets_without_kube_controller_manager_say_so_and_how_to_get_it(clean_env, tmp_path):
    clean_env.setenv(ASSETS_ENV, str(fake_binaries(tmp_path, ["etcd", "kube-apiserver"])))
    launcher, why = find_control_plane()
    assert launcher is None  # not the shared launcher instead: the folder named is the one asked for
    assert f"${ASSETS_ENV}={tmp_path} has etcd and kube-apiserver but no kube-controller-manager" in why
    assert "kubernetes-server-linux-amd64.tar.gz" in why and "TEST_ASSET_KUBE_CONTROLLER_MANAGER" in why
    kcm = fake_binaries(tmp_path / "elsewhere", ["kube-controller-manager"]) / "kube-controller-manager"
    clean_env.setenv("TEST_ASSET_KUBE_CONTROLLER_MANAGER", str(kcm))  # envtest's per-binary override
    assert find_control_plane() == (ENVTEST, "")


def test_assets_missing_more_name_each(clean_env, tmp_path):
    clean_env.setenv(ASSETS_ENV, str(fake_binaries(tmp_path, ["kube-apiserver"])))
    launcher, why = find_control_plane()
    assert launcher is None and "no executable etcd or kube-controller-manager" in why


@pytest.mark.parametrize("backend", ["cryptography", "openssl"])
def test_the_certificates_chain_to_their_ca_with_the_launchers_names(backend, tmp_path, monkeypatch):
    if backend == "openssl":
        if shutil.which("openssl") is None:
            pytest.skip("openssl is not installed")
        monkeypatch.setitem(sys.modules, "cryptography", None)  # `import cryptography` fails: openssl is used
    pki = make_pki(tmp_path / "pki")
    monkeypatch.undo()
    assert (pki / ".complete").exists() and not (tmp_path / "pki.new").exists()
    assert (pki / "openssl.cnf").exists() == (backend == "openssl")
    certs = {name: x509.load_pem_x509_certificate((pki / f"{name}.crt").read_bytes()) for name in CERTIFICATES}
    for name, ((org, common_name), issuer, profile) in CERTIFICATES.items():
        cert = certs[name]
        cert.verify_directly_issued_by(certs[issuer or name])
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == common_name
        assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == ([org] if org else [])
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca == (profile == "ca")
        if profile != "ca":
            usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH if profile == "server" else ExtendedKeyUsageOID.CLIENT_AUTH]
        assert (pki / f"{name}.key").stat().st_mode & 0o077 == 0
    names = certs["apiserver"].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kubernetes.default.svc" in names.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in map(str, names.get_values_for_type(x509.IPAddress))
    sa_key = serialization.load_pem_private_key((pki / "sa.key").read_bytes(), None)
    assert sa_key.public_key() == serialization.load_pem_public_key((pki / "sa.pub").read_bytes())
    assert make_pki(pki) == pki  # complete: kept as it is


def test_absent_control_plane_skips_locally_and_fails_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="no control plane here"):
        unavailable("no control plane here")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: the real-API tests must run"):
        unavailable("no control plane here")
