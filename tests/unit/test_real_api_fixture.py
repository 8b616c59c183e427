"""The real-API layer's fixture: without a control plane it skips with one reason, under CI=true it fails."""

from __future__ import annotations

import pytest

from tests.real.conftest import unavailable
from tests.real.controlplane import LAUNCHER_ENV, REPO, find_control_plane


def test_the_launcher_beside_the_repository_is_found(monkeypatch):
    monkeypatch.delenv(LAUNCHER_ENV, raising=False)
    launcher, why = find_control_plane()
    expected = REPO.parent / "shared" / "k8s" / "control-plane"
    if expected.exists():
        assert (launcher, why) == (expected, "")
    else:
        assert launcher is None and str(expected) in why


def test_a_named_launcher_that_is_missing_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv(LAUNCHER_ENV, str(tmp_path / "nowhere"))
    launcher, why = find_control_plane()
    assert launcher is None and "nowhere" in why and "not an executable" in why


def test_absent_control_plane_skips_locally_and_fails_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="no control plane here"):
        unavailable("no control plane here")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: the real-API tests must run"):
        unavailable("no control plane here")
