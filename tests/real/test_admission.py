"""Admission and kubectl on a real API server, with the CRD installed from `crds/` by server-side apply.

- kube-apiserver accepts the CRD itself (structural schema, CEL rules within the cost budget);
- every example passes `kubectl apply --dry-run=server --validate=strict`;
- every manifest of tests/manifests/invalid/ is refused at admission — except those only the
  operator can tell (tests/unit/test_invalid_manifests.py: OPERATOR_ONLY), which are stored and
  end `Failed`/`InvalidSpec` under the real operator;
- a pipeline run to the end shows its printer columns in `kubectl get tp`, and `kubectl explain`
  documents the fields from the CRD.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
import yaml

from tests.builders import catalog_expectation
from tests.unit.test_invalid_manifests import OPERATOR_ONLY

from .conftest import create_pipeline, get_pipeline, wait_until
from .test_least_privilege import finished, two_stages

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
INVALID = sorted((REPO / "tests" / "manifests" / "invalid").glob("*.yaml"))
# Refused by the API server before the CRD's schema: not a DNS name / a version it does not serve.
REFUSED_BEFORE_SCHEMA = {"pipeline-name-not-dns", "wrong-api-version"}
pytestmark = pytest.mark.timeout(240)


def test_every_example_passes_strict_server_side_validation(kubectl, namespace):
    for path in EXAMPLES:
        result = kubectl.run("apply", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", str(path), check=False)
        assert result.returncode == 0, f"{path.name}: {result.stderr}"
        assert "created (server dry run)" in result.stdout


def test_every_invalid_manifest_is_refused_at_admission(kubectl, namespace):
    admitted = []
    for path in INVALID:
        result = kubectl.run("apply", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", str(path), check=False)
        if path.stem in OPERATOR_ONLY and path.stem not in REFUSED_BEFORE_SCHEMA:
            admitted.append(path.stem)
            assert result.returncode == 0, f"{path.stem} is now refused at admission: {result.stderr}"
            continue
        assert result.returncode != 0, f"{path.stem} was admitted:\n{result.stdout}"
        if path.stem not in REFUSED_BEFORE_SCHEMA:
            field, _ = catalog_expectation(path)
            top = field.split("[")[0]  # the API server names the list (`spec.stages[1]` in its own words)
            assert top in result.stderr, f"{path.stem}: {result.stderr}"
    assert set(admitted) == OPERATOR_ONLY - REFUSED_BEFORE_SCHEMA


def test_a_stage_naming_itself_is_refused_by_cel(kubectl, namespace):
    for stem, text in (("from-itself", "cannot start `from` itself"), ("reward-model-itself", "its own `rewardModel`")):
        result = kubectl.run("apply", "--dry-run=server", "-n", namespace, "-f", str(REPO / "tests/manifests/invalid" / f"{stem}.yaml"),
                             check=False)
        assert result.returncode != 0 and text in result.stderr, result.stderr


async def test_what_admission_lets_through_ends_invalid_spec(admin, kubectl, namespace, chart_operator):
    operator = chart_operator(namespace)
    operator.start()
    await asyncio.to_thread(operator.wait_live)
    stems = sorted(OPERATOR_ONLY - REFUSED_BEFORE_SCHEMA)
    for stem in stems:
        manifest = yaml.safe_load((REPO / "tests/manifests/invalid" / f"{stem}.yaml").read_text())
        manifest["metadata"] = {"name": stem, "namespace": namespace}
        await create_pipeline(admin, manifest)
    for stem in stems:
        status = await wait_until(lambda stem=stem: finished(admin, namespace, stem), 60, f"{stem} to fail")
        failed = next(c for c in status["conditions"] if c["type"] == "Failed")
        field, text = catalog_expectation(REPO / "tests/manifests/invalid" / f"{stem}.yaml")
        assert (status["phase"], failed["reason"]) == ("Failed", "InvalidSpec") and field in failed["message"], status
    jobs = kubectl.run("get", "jobs", "-n", namespace, "-o", "name").stdout.split()
    assert jobs == []  # nothing was started for an invalid pipeline


def kubectl_table(text: str) -> list[dict[str, str]]:
    """`kubectl get` output as rows of {column: value}, cut at the header's column offsets (an
    empty cell is blank, not a shifted column)."""
    header, *rows = text.splitlines()
    starts = [i for i, c in enumerate(header) if c != " " and (i == 0 or header[i - 1] == " ")]
    names = header.split()
    cut = lambda line: [line[a:b].strip() for a, b in zip(starts, starts[1:] + [None])]  # noqa: E731
    return [dict(zip(names, cut(row))) for row in rows]


async def test_printer_columns_and_explain(admin, kubectl, namespace, node, chart_operator):
    operator = chart_operator()
    operator.start()
    await asyncio.to_thread(operator.wait_live)
    manifest = two_stages("cols", namespace)
    manifest["spec"]["stages"][1]["training"] = {"maxSteps": 200, "saveSteps": 4}  # ~10 s: time to look
    await create_pipeline(admin, manifest)

    async def sft_checkpointed():
        status = ((await get_pipeline(admin, namespace, "cols")) or {}).get("status") or {}
        return status.get("currentStage") == "sft" and (status.get("checkpointStep") or 0) >= 4

    await wait_until(sft_checkpointed, 60, "an sft checkpoint")
    table = kubectl.run("get", "tp", "-n", namespace).stdout
    print(f"\n$ kubectl get tp\n{table}")
    (row,) = kubectl_table(table)
    assert list(row) == ["NAME", "STAGE", "PHASE", "PROGRESS", "CKPT-STEP", "CKPT-AGE", "ETA", "AGE"], row
    assert (row["NAME"], row["STAGE"], row["PHASE"], row["PROGRESS"]) == ("cols", "sft", "Running", "1/2"), row
    assert int(row["CKPT-STEP"]) >= 4 and row["CKPT-AGE"].endswith("s") and row["AGE"], row
    # Both stages have measured a pace by now: the pipeline's time left is the running sft's.
    assert re.fullmatch(r"\d+s|\d+m\d\ds", row["ETA"]), row

    assert (await wait_until(lambda: finished(admin, namespace, "cols"), 120, "the pipeline"))["phase"] == "Succeeded"
    (row,) = kubectl_table(kubectl.run("get", "tp", "-n", namespace).stdout)
    # No stage is running any more: STAGE and the running stage's checkpoint columns are blank.
    assert (row["STAGE"], row["PHASE"], row["PROGRESS"], row["CKPT-STEP"], row["ETA"]) == ("", "Succeeded", "2/2", "", ""), row
    stored = yaml.safe_load(kubectl.run("get", "tp", "cols", "-n", namespace, "-o", "yaml").stdout)
    assert stored["status"]["observedGeneration"] == stored["metadata"]["generation"] == 1
    explained = kubectl.run("explain", "trainingpipeline.spec.stages.training").stdout
    assert "maxSteps" in explained and "saveSteps" in explained and "DESCRIPTION" in explained
    assert "rewardModel" in kubectl.run("explain", "tp.spec.stages").stdout
