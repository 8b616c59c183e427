"""Every manifest of the invalid catalog that reaches the operator (kmock, like an API server
with a stale or hand-edited CRD, admits anything) ends Failed / InvalidSpec with a message naming
the field — and the operator creates nothing for it."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from refinery_operator.reconcile import reconcile
from tests.builders import catalog_expectation

CATALOG = sorted((Path(__file__).resolve().parents[1] / "manifests" / "invalid").glob("*.yaml"))
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


class RecordingCluster:
    """Only a status patch is allowed: an invalid pipeline must not create or even list anything."""

    def __init__(self) -> None:
        self.patches: list[dict] = []

    async def patch_status(self, namespace, name, old, new, resource_version=None) -> dict:
        self.patches.append(new)
        return {"status": new}

    def __getattr__(self, name):
        raise AssertionError(f"the operator called {name}() for an invalid pipeline")


@pytest.mark.parametrize("path", CATALOG, ids=lambda p: p.stem)
async def test_invalid_spec_is_failed_with_the_field_named(path):
    body = yaml.safe_load(path.read_text())
    body["metadata"] = {**body["metadata"], "namespace": "default", "uid": "u1", "generation": 3}
    cluster = RecordingCluster()
    outcome = await reconcile(cluster, body, children=cluster, now=NOW)  # reading its children fails too
    field, text = catalog_expectation(path)
    assert outcome.invalid and field in outcome.invalid and text in outcome.invalid, outcome.invalid
    (status,) = cluster.patches
    assert status["phase"] == "Failed"
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "InvalidSpec")
    assert field in failed["message"]
