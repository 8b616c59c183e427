"""Markers every layer shares: `gpu` tests are skipped cleanly where no CUDA device is present."""

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
