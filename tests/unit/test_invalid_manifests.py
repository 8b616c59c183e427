"""The catalog of malformed manifests (tests/manifests/invalid/): each one is refused by
`refinery validate` with a message naming the field, and — unless only the operator can tell —
by the CRD's own schema and CEL rules, as the API server would refuse it at `kubectl apply`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from refinery.api.admission import admission_problems
from refinery_operator.cli import main
from tests.builders import catalog_expectation

CATALOG = sorted((Path(__file__).resolve().parents[1] / "manifests" / "invalid").glob("*.yaml"))

# What CEL cannot express within the API server's cost budget (graph walks) or what needs
# arithmetic across fields: the operator refuses these with InvalidSpec instead.
OPERATOR_ONLY = {
    "dependency-cycle", "depends-on-unknown-stage", "depends-on-misses-from",
    "heads-do-not-divide-width",
    # eval.* references: one more walk over `stages` per name, past the cost budget.
    "eval-model-unknown-stage", "eval-judge-not-a-reward-stage", "eval-reward-source-not-a-reward-stage",
    # The API server refuses these itself, before any CRD schema is consulted: object names must
    # be DNS names, and a group/version it does not serve is a 404.
    "pipeline-name-not-dns", "wrong-api-version",
}


def test_the_catalog_is_large_enough():
    assert len(CATALOG) >= 30


@pytest.mark.parametrize("path", CATALOG, ids=lambda p: p.stem)
def test_validate_names_the_field(path, capsys):
    field, text = catalog_expectation(path)
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    problems = [l.strip().removeprefix("- ") for l in err.splitlines() if l.strip().startswith("- ")]
    assert any(p.startswith(field) and text in p for p in problems), problems
    assert "Traceback" not in err


@pytest.mark.parametrize("path", CATALOG, ids=lambda p: p.stem)
def test_the_crd_refuses_it_at_admission(path):
    problems = admission_problems(yaml.safe_load(path.read_text()))
    if path.stem in OPERATOR_ONLY:
        assert not problems, f"{path.stem} is now caught at admission: take it out of OPERATOR_ONLY"
    else:
        field, _ = catalog_expectation(path)
        assert any(p.startswith(field.split("[")[0]) for p in problems), problems
