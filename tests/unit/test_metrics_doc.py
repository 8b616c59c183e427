"""docs/metrics.md is generated from the metric definitions: it fails here when it drifts."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_metrics_reference_matches_the_code():
    spec = importlib.util.spec_from_file_location("make_metrics_doc", REPO / "scripts" / "make_metrics_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (REPO / "docs" / "metrics.md").read_text() == module.render(), "regenerate: python scripts/make_metrics_doc.py"
