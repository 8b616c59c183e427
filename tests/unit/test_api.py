"""The resource's API: the committed CRD matches the models, examples validate against it, the
CEL admission rules agree with the models, and bad manifests are rejected by field."""

from __future__ import annotations

from pathlib import Path

import celpy
import pytest
import yaml
from openapi_schema_validator import OAS30Validator

from refinery_operator.api.crd import CEL_RULES, crd, render
from refinery_operator.api.load import InvalidManifest, load_pipelines, parse_pipeline
from refinery_operator.cli import main
from tests.builders import chat_pipeline, make_pipeline

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "trainingpipelines.refinery.dev.yaml"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def schema() -> dict:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def strict_schema() -> dict:
    """The schema as `kubectl apply` (strict field validation) applies it: unknown fields are errors.

    A structural schema cannot say `additionalProperties: false` beside `properties`; the API
    server instead rejects unknown fields when the client asks for strict validation."""

    def close(node: dict) -> dict:
        node = dict(node)
        if "properties" in node:
            node["properties"] = {k: close(v) for k, v in node["properties"].items()}
            if node["properties"].keys() != {"apiVersion", "kind", "metadata", "spec", "status"}:
                node["additionalProperties"] = False
        if isinstance(node.get("items"), dict):
            node["items"] = close(node["items"])
        return node

    return close(schema())


def test_committed_crd_matches_the_models():
    assert CRD_FILE.read_text() == render(), "the CRD drifted: run `refinery crd -o crds/trainingpipelines.refinery.dev.yaml`"


def test_crd_schema_is_structural():
    def walk(node: dict, path: str) -> None:
        assert "type" in node, f"{path} has no type"
        assert not {"$ref", "anyOf", "oneOf", "allOf"} & node.keys(), path
        assert "x-kubernetes-preserve-unknown-fields" not in node, path
        for name, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}{{}}")

    walk(schema()["properties"]["spec"], "spec")
    walk(schema()["properties"]["status"], "status")


def test_every_field_has_a_description():
    missing = []

    def walk(node: dict, path: str) -> None:
        for name, sub in node.get("properties", {}).items():
            if "description" not in sub:
                missing.append(f"{path}.{name}")
            walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(schema()["properties"]["spec"], "spec")
    assert not missing


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_the_generated_schema(example):
    assert EXAMPLES, "no examples"
    for doc in yaml.safe_load_all(example.read_text()):
        OAS30Validator(strict_schema()).validate(doc)
        assert evaluate_cel_rules(doc["spec"]) == []
    assert load_pipelines(example)


def cel_nodes(spec: dict):
    """(model title, object) pairs the CEL rules apply to, for one spec."""
    yield "PipelineSpec", spec
    yield "Storage", spec["storage"]
    for stage in spec["stages"]:
        yield "Stage", stage
        if "model" in stage:
            yield "ModelSource", stage["model"]
        if "rl" in stage:
            yield "RlSpec", stage["rl"]


def with_defaults(obj, node: dict):
    """The object after the API server's defaulting (schema `default`s), which runs before CEL."""
    if isinstance(obj, dict) and "properties" in node:
        out = dict(obj)
        for name, sub in node["properties"].items():
            if name not in out and "default" in sub:
                out[name] = sub["default"]
            if name in out:
                out[name] = with_defaults(out[name], sub)
        return out
    if isinstance(obj, list) and isinstance(node.get("items"), dict):
        return [with_defaults(item, node["items"]) for item in obj]
    return obj


def evaluate_cel_rules(spec: dict) -> list[str]:
    """Evaluate the CRD's CEL rules offline, as the API server would at admission (after defaulting)."""
    spec = with_defaults(spec, schema()["properties"]["spec"])
    env = celpy.Environment()
    failed = []
    for title, obj in cel_nodes(spec):
        for rule in CEL_RULES[title]:
            program = env.program(env.compile(rule["rule"]))
            if not program.evaluate({"self": celpy.json_to_cel(obj)}):
                failed.append(rule["message"])
    return failed


BAD_MANIFESTS = [
    # (what is wrong, edit of a valid chat pipeline, expected field path in the error, CEL rule also catches it)
    ("duplicate stage", lambda m: m["spec"]["stages"].append(dict(m["spec"]["stages"][0])), "spec.stages", True),
    ("from names no stage", lambda m: m["spec"]["stages"][1].update({"from": "nope"}), "spec.stages", True),
    ("rlhf without rewardModel", lambda m: m["spec"]["stages"][3].pop("rewardModel"), "spec.stages[3]", True),
    ("rewardModel is not a reward stage", lambda m: m["spec"]["stages"][3].update({"rewardModel": "sft"}), "spec.stages", True),
    ("both from and model", lambda m: m["spec"]["stages"][1].update({"model": {"hubId": "x"}}), "spec.stages[1]", True),
    ("two model sources", lambda m: m["spec"]["stages"][0]["model"].update({"hubId": "x"}), "spec.stages[0].model", True),
    ("two storages", lambda m: m["spec"]["storage"].update({"claim": {"size": "1Gi"}}), "spec.storage", True),
    ("misspelt field", lambda m: m["spec"]["stages"][0]["training"].update({"maxStep": 5}), "spec.stages[0].training.maxStep", False),
    ("bad stage type", lambda m: m["spec"]["stages"][0].update({"type": "ppo"}), "spec.stages[0].type", False),
    ("bad stage name", lambda m: m["spec"]["stages"][0].update({"name": "Pre_Train"}), "spec.stages[0].name", False),
    ("negative learning rate", lambda m: m["spec"]["stages"][0]["training"].update({"learningRate": -1}), "spec.stages[0].training.learningRate", False),
    ("no stages", lambda m: m["spec"].update({"stages": []}), "spec.stages", False),
    ("rloo with one generation", lambda m: m["spec"]["stages"][3].update({"rl": {"numGenerations": 1}}), "spec.stages[3].rl", True),
    ("dpo settings on an sft stage", lambda m: m["spec"]["stages"][1].update({"dpo": {"beta": 0.1}}), "spec.stages[1]", True),
]


@pytest.mark.parametrize(("what", "edit", "field", "cel"), BAD_MANIFESTS, ids=[b[0] for b in BAD_MANIFESTS])
def test_bad_manifests_are_rejected_naming_the_field(what, edit, field, cel):
    manifest = chat_pipeline().manifest()
    for stage in manifest["spec"]["stages"]:
        stage.setdefault("training", {"maxSteps": 10})
    edit(manifest)
    with pytest.raises(InvalidManifest) as caught:
        parse_pipeline(manifest)
    assert any(p.startswith(field) for p in caught.value.problems), caught.value.problems
    if cel:
        assert evaluate_cel_rules(manifest["spec"]), f"the CRD's CEL rules let '{what}' through"
    else:
        assert list(OAS30Validator(strict_schema()).iter_errors(manifest)), f"the CRD schema lets '{what}' through"


def test_dependency_cycles_are_rejected():
    manifest = (
        make_pipeline().stage("a", "sft", from_="b", model=None).stage("b", "sft", from_="a").manifest()
    )
    with pytest.raises(InvalidManifest, match="cycle a -> b -> a"):
        parse_pipeline(manifest)


def test_validate_command_prints_every_problem(tmp_path, capsys):
    bad = chat_pipeline().manifest()
    bad["spec"]["stages"][3].pop("rewardModel")
    bad["spec"]["stages"][0]["training"] = {"maxStep": 5}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "spec.stages[0].training.maxStep: unknown field" in err
    assert "spec.stages[3]" in err and "rewardModel" in err
    assert "Traceback" not in err


def test_run_refuses_an_invalid_manifest_before_touching_the_workdir(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("apiVersion: refinery.dev/v1alpha1\nkind: TrainingPipeline\nmetadata: {name: x}\nspec: {stages: []}\n")
    workdir = tmp_path / "work"
    assert main(["run", str(path), "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert "spec.storage" in err and "spec.stages" in err
    assert not workdir.exists()
