"""What every layer shares: `gpu` tests are skipped cleanly where no CUDA device is present, and one
real MLflow tracking server per session (started by the first test that asks for it)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    try:  # torch only when a gpu test was collected: the operator's layers never import it
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        skip = pytest.mark.skip(reason="needs a CUDA device (marker gpu)")
        for item in gpu_tests:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    from tests.mlflowserver import start_mlflow_server

    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()
