"""Fixtures for the operator against kmock's Kubernetes emulator.

The emulator is served on loopback; a kubeconfig points everything at it — kopf's login, the
operator's `k8s.Cluster`, and the stage processes' progress reporter — exactly as they would
point at a real API server.

Where kmock is not a real API server (checked in kmock 0.8; the tests do not pretend):
- label selectors are ignored on list and watch: `k8s.Cluster.list_labelled` filters locally
  too, and kopf filters handler labels client-side anyway;
- no resourceVersion (lists say "..."), no uid, no generation, no creationTimestamp: the tests
  give each pipeline a uid themselves (owner references need one); `observedGeneration` stays
  unset;
- no status subresource isolation: a PATCH to `/status` merges into the whole object (and a
  PATCH to the object could change the status); no schema, no defaulting, no CEL: an invalid
  manifest is stored as sent, so the operator's own validation is what the test exercises;
- no garbage collection: ownerReferences are checked, not acted on; no Job controller, no
  kubelet: `kubelet.py` plays both; patches are JSON merge patches whatever the content type
  (strategic merge of lists is not emulated).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kmock
import kubernetes.config.kube_config
import pytest
import pytest_asyncio

import refinery_operator.handlers  # noqa: F401 - registers the handlers in kopf's default registry
from refinery_operator.k8s import Cluster

# The harness lives in harness.py (importable by benchmarks/); these names stay importable from here.
from .harness import (  # noqa: F401
    KUBECONFIG, NAMESPACE, RESOURCES, VERBS, create_pipeline, operator_in_thread, serve_emulator, stored,
    stored_all, wait_for, with_server_fields, write_kubeconfig,
)
from .kubelet import Kubelet


@pytest_asyncio.fixture()
async def emulator() -> AsyncIterator[kmock.KubernetesEmulator]:
    async with serve_emulator() as api:
        yield api


@pytest.fixture()
def server_url(emulator: kmock.KubernetesEmulator) -> str:
    return str(emulator.url).rstrip("/")


@pytest.fixture()
def kubeconfig(tmp_path: Path, server_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = write_kubeconfig(tmp_path / "kubeconfig", server_url)
    monkeypatch.setenv("KUBECONFIG", str(path))  # for the stage processes, like a workstation's
    # The client reads $KUBECONFIG once, when imported; kopf's login uses that default.
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return path


@pytest.fixture()
def cluster(kubeconfig: Path) -> Cluster:
    """The test's own API client (the same class the operator uses)."""
    api = Cluster.from_environment(str(kubeconfig))
    yield api
    api.close()


@pytest.fixture()
def start_operator(kubeconfig: Path) -> Callable[[], Any]:
    """`async with start_operator(): ...` runs the real kopf operator in its own thread and loop.

    Not in the test's loop: like a real operator process, it must not share tasks with the
    emulator and the kubelet (on exit, kopf cancels every task created while it ran).
    """

    return lambda: operator_in_thread(kubeconfig)


@pytest_asyncio.fixture()
async def kubelet(server_url: str, kubeconfig: Path, tmp_path: Path) -> AsyncIterator[Kubelet]:
    node = Kubelet(server_url, kubeconfig, tmp_path / "node", NAMESPACE)
    task = asyncio.create_task(node.run())
    yield node
    if task.done():  # the kubelet died under the test: show why
        task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
