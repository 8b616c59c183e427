"""The resource's API: the committed CRD matches the models, examples validate against it, the
CEL admission rules agree with the models, and bad manifests are rejected by field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from refinery.api.admission import cel_problems, schema_problems, with_defaults
from refinery.api.crd import crd, render
from refinery.api.load import InvalidManifest, load_pipelines, parse_pipeline
from refinery_operator.cli import main
from tests.builders import chat_pipeline, make_pipeline

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "trainingpipelines.refinery.dev.yaml"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def schema() -> dict:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


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
        assert schema_problems(doc) == []
        assert evaluate_cel_rules(doc["spec"]) == []
    assert load_pipelines(example)


def evaluate_cel_rules(spec: dict) -> list[str]:
    node = schema()["properties"]["spec"]
    return cel_problems(with_defaults(spec, node), node, "spec")


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
    ("a tokenize step on an sft stage", lambda m: m["spec"]["stages"][1]["data"].update({"tokenize": {"workers": 2}}),
     "spec.stages[1]", True),
    ("no tokenize workers", lambda m: m["spec"]["stages"][0]["data"].update({"tokenize": {"workers": 0}}),
     "spec.stages[0].data.tokenize.workers", False),
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
        assert schema_problems(manifest), f"the CRD schema lets '{what}' through"


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


# The API server's static budget (k8s.io/apiextensions-apiserver, validation.go): one rule may
# cost at most StaticEstimatedCostLimit, all rules of a CRD together StaticEstimatedCRDCostLimit.
PER_RULE_LIMIT = 10_000_000
PER_CRD_LIMIT = 100_000_000


def worst_case_cost(rule: str, enclosing_items: int, max_items: int, max_string: int) -> int:
    """An upper bound of a rule's cost as the API server estimates it: every comprehension walks
    its whole list (`stages`: max_items; an rlhf stage's `rewards`/`audit`: MAX_REWARDS) as many
    times as the comprehensions around it, every comparison of two names costs up to their
    length, and a rule on a list item runs once per item."""
    from refinery.api.rewards import MAX_REWARDS

    walks, stack, depth = 0, [], 0  # stack: (paren depth a comprehension opened at, its walk count)
    for i, ch in enumerate(rule):
        if ch == "(":
            opener = next((m for m in (".all(", ".exists(", ".exists_one(") if rule.endswith(m, 0, i + 1)), None)
            if opener:
                walked = rule[:i + 1 - len(opener)]
                size = MAX_REWARDS if walked.endswith((".rewards", ".audit")) else max_items
                outer = stack[-1][1] if stack else 1
                stack.append((depth, outer * size))
                walks += outer * size
            depth += 1
        elif ch == ")":
            depth -= 1
            if stack and stack[-1][0] == depth:
                stack.pop()
    comparisons = max(1, rule.count("==") + rule.count("!="))
    return enclosing_items * max(1, walks) * comparisons * (max_string + 1)


def test_cel_rules_stay_within_the_api_servers_cost_budget():
    from refinery.api.base import MAX_STAGES, STAGE_NAME_MAX

    spec = schema()["properties"]["spec"]
    stage = spec["properties"]["stages"]["items"]
    nodes = [(spec, 1), (spec["properties"]["storage"], 1), (stage, MAX_STAGES)]
    nodes += [(stage["properties"][k], MAX_STAGES) for k in ("model", "rl")]
    total = 0
    for node, enclosing in nodes:
        for rule in node.get("x-kubernetes-validations", []):
            cost = worst_case_cost(rule["rule"], enclosing, MAX_STAGES, STAGE_NAME_MAX)
            assert cost <= PER_RULE_LIMIT, (rule["rule"], cost)
            total += cost
    assert total <= PER_CRD_LIMIT
    # The lists and strings those rules walk are bounded, or the real estimate is unbounded.
    assert spec["properties"]["stages"]["maxItems"] == MAX_STAGES
    assert stage["properties"]["name"]["maxLength"] == STAGE_NAME_MAX


@pytest.mark.parametrize(("tokenize", "message"), [
    ({"workers": 0}, "spec.stages[0].data.tokenize.workers: Input should be greater than or equal to 1"),
    ({"workers": 257}, "spec.stages[0].data.tokenize.workers: Input should be less than or equal to 256"),
    ({}, "spec.stages[0].data.tokenize.workers: Field required"),
    ({"workers": 2, "cpu": "lots"}, "spec.stages[0].data.tokenize.cpu: String should match pattern"),
])
def test_a_bad_tokenize_step_is_rejected_with_what_to_change(tokenize, message):
    manifest = make_pipeline().stage("pretrain", "pretrain").manifest()
    manifest["spec"]["stages"][0]["data"]["tokenize"] = tokenize
    with pytest.raises(InvalidManifest) as caught:
        parse_pipeline(manifest)
    assert any(p.startswith(message) for p in caught.value.problems), caught.value.problems


def test_a_tokenize_step_on_another_stage_type_says_it_is_for_pretrain_only():
    manifest = chat_pipeline().manifest()
    manifest["spec"]["stages"][1]["data"]["tokenize"] = {"workers": 4}
    with pytest.raises(InvalidManifest) as caught:
        parse_pipeline(manifest)
    assert caught.value.problems == ["spec.stages[1]: `data.tokenize` is only valid on pretrain stages: only a streamed "
                                     "pretraining corpus is tokenized ahead of its stage"]
    assert evaluate_cel_rules(manifest["spec"]) == [f"spec.stages[1]: {caught.value.problems[0].split(': ', 1)[1]}"]
