"""Generate the TrainingPipeline CustomResourceDefinition from the pydantic models.

    refinery crd > crds/trainingpipelines.refinery.dev.yaml

pydantic emits JSON Schema (2020-12); Kubernetes wants a *structural* OpenAPI v3.0 schema: every
node typed, no `$ref`, no `anyOf` alternatives of different types, `nullable` instead of a null
type, boolean `exclusiveMinimum`. This module does that conversion and adds what pydantic cannot
express: the CEL rules (`x-kubernetes-validations`) that the API server checks at admission, the
status subresource and the printer columns. Nothing here imports kopf or a Kubernetes client.
"""

from __future__ import annotations

from typing import Any

import yaml

from .credentials import CEL_NO_SECRET_ENV_VALUE, cel_no_uri_credential
from .sources import CEL_KNOWN_SCHEME, UNKNOWN_SCHEME_MESSAGE
from .v1alpha1 import (
    GROUP, KIND, PACKING_MESSAGE, MIXTURE_MESSAGE, PRETRAIN_MIXTURE_MESSAGE, PLURAL, PPO_ONE_PROCESS_MESSAGE, RLHF_INPUTS_MESSAGE, SHARED_VOLUME_MESSAGE, SHORT_NAMES, SINGULAR,
    TOKENIZE_ONLY_PRETRAIN_MESSAGE,
    VERSION, VLLM_GPU_MESSAGE, PipelineSpec, PipelineStatus,
)
from .evaluation import SAMPLES_NEED_TEMPERATURE_MESSAGE
from .training import VLLM_PPO_MESSAGE

# Keywords that have no meaning (or are not allowed) in a CRD schema.
DROPPED = {"title", "$defs", "examples"}

# CEL rules per schema node, keyed by the pydantic model's title. Every list and string they
# touch is bounded (maxItems / maxLength) so the API server's cost estimate stays within budget.
CEL_RULES: dict[str, list[dict[str, str]]] = {
    "PipelineSpec": [
        {
            "rule": "self.stages.all(s, self.stages.exists_one(t, t.name == s.name))",
            "message": "stage names must be unique",
            "fieldPath": ".stages",
        },
        {
            "rule": "self.stages.all(s, !has(s.from) || self.stages.exists(t, t.name == s.from))",
            "message": "`from` must name a stage of this pipeline",
            "fieldPath": ".stages",
        },
        {
            "rule": "self.stages.all(s, !has(s.rewardModel) || self.stages.exists(t, t.name == s.rewardModel && t.type == 'reward'))",
            "message": "`rewardModel` must name a reward stage of this pipeline",
            "fieldPath": ".stages",
        },
        {
            "rule": "self.stages.all(s, !has(s.rl) || ((!has(s.rl.rewards) || s.rl.rewards.all(r, !has(r.model) "
                    "|| self.stages.exists(t, t.name == r.model && t.type == 'reward'))) && (!has(s.rl.audit) "
                    "|| s.rl.audit.all(r, !has(r.model) || self.stages.exists(t, t.name == r.model && t.type == 'reward')))))",
            "message": "a `model` of rl.rewards or rl.audit must name a reward stage of this pipeline",
            "fieldPath": ".stages",
        },
        {
            "rule": "!has(self.storage.claim) || self.stages.all(s, !has(s.resources) || !has(s.resources.nodes) "
                    "|| s.resources.nodes <= 1) || (has(self.storage.claim.accessModes) "
                    "&& self.storage.claim.accessModes.exists(m, m == 'ReadWriteMany'))",
            "message": SHARED_VOLUME_MESSAGE,  # no fieldPath: the same line as the operator's own check
        },
        {
            "rule": "!has(self.export) || self.stages.exists(t, t.name == self.export.stage)",
            "message": "spec.export.stage must name a stage of this pipeline",
        },
    ],
    "Stage": [
        {"rule": "self.type == 'eval' || has(self.from) != has(self.model)", "message": "set exactly one of `from` (a stage) or `model`"},
        {"rule": "self.type == 'eval' || has(self.data)", "message": "`data` is required (every stage type but eval trains on a dataset)"},
        {"rule": "self.type != 'eval' || (has(self.eval) && !has(self.from) && !has(self.model) && !has(self.data))",
         "message": "an eval stage needs `eval` and trains nothing: no `from`, `model` or `data`"},
        {"rule": "self.type == 'eval' || !has(self.eval)", "message": "`eval` is only valid on eval stages"},
        {"rule": "self.type != 'export'", "message": "stages[].type `export` is not written as a stage: set spec.export instead"},
        # A stage naming itself: per stage and constant cost (the graph walks stay the operator's).
        {"rule": "!has(self.from) || self.from != self.name", "message": "a stage cannot start `from` itself",
         "fieldPath": ".from"},
        {"rule": "!has(self.rewardModel) || self.rewardModel != self.name",
         "message": "a stage cannot be its own `rewardModel` (it names itself)", "fieldPath": ".rewardModel"},
        {"rule": "!has(self.dependsOn) || !self.dependsOn.exists(d, d == self.name)",
         "message": "a stage cannot depend on itself", "fieldPath": ".dependsOn"},
        {
            "rule": "self.type != 'pretrain' || !has(self.training) || !has(self.training.lora)",
            "message": "`training.lora` is not valid on pretrain stages: pretraining trains every weight",
        },
        {
            "rule": "self.type == 'pretrain' || !has(self.data) || !has(self.data.tokenize)",
            "message": TOKENIZE_ONLY_PRETRAIN_MESSAGE,
        },
        {
            "rule": "self.type == 'sft' || !has(self.training) || !has(self.training.packing)",
            "message": PACKING_MESSAGE,
        },
        {"rule": "self.type != 'pretrain' || !has(self.data) || !has(self.data.mixture)", "message": PRETRAIN_MIXTURE_MESSAGE},
        {
            "rule": "!has(self.rl) || !has(self.rl.generation) || self.rl.generation != 'vllm' || !has(self.resources) "
                    "|| !has(self.resources.gpus) || self.resources.gpus >= 1",
            "message": VLLM_GPU_MESSAGE,
        },
        {
            "rule": "self.type != 'rlhf' || (has(self.from) && has(self.rewardModel) != (has(self.rl) && has(self.rl.rewards)))",
            "message": RLHF_INPUTS_MESSAGE,
        },
        {"rule": "self.type == 'rlhf' || !has(self.rewardModel)", "message": "`rewardModel` is only valid on rlhf stages"},
        {"rule": "self.type == 'rlhf' || !has(self.rl)", "message": "`rl` is only valid on rlhf stages"},
        {"rule": "self.type == 'dpo' || !has(self.dpo)", "message": "`dpo` is only valid on dpo stages"},
        {
            "rule": "!has(self.rl) || !has(self.rl.algorithm) || self.rl.algorithm != 'ppo' || (!has(self.deepspeed) "
                    "&& (!has(self.training) || !has(self.training.lora)) && (!has(self.resources) "
                    "|| ((!has(self.resources.nodes) || self.resources.nodes <= 1) "
                    "&& (!has(self.resources.gpus) || self.resources.gpus <= 1))))",
            "message": PPO_ONE_PROCESS_MESSAGE,
        },
        # Transition rules (`oldSelf`): the API server evaluates them on an update, per stage, the
        # old stage being the one of the same name (`stages` is a map list keyed by name). CEL on
        # the spec cannot see the status, so "started" cannot be told apart: a stage's identity —
        # what it trains and from what — is fixed once the stage exists. Changing it means a new
        # stage name; a changed `training` (or rl, dpo, deepspeed) re-runs the stage instead.
        {"rule": "self.type == oldSelf.type", "message": "a stage's `type` cannot change; add a stage with a new name instead"},
        {
            "rule": "has(self.from) == has(oldSelf.from) && (!has(self.from) || self.from == oldSelf.from)",
            "message": "a stage's `from` cannot change; add a stage with a new name instead",
        },
        {
            "rule": "has(self.model) == has(oldSelf.model) && (!has(self.model) || self.model == oldSelf.model)",
            "message": "a stage's `model` cannot change; add a stage with a new name instead",
        },
        {
            "rule": "has(self.rewardModel) == has(oldSelf.rewardModel) && (!has(self.rewardModel) || self.rewardModel == oldSelf.rewardModel)",
            "message": "a stage's `rewardModel` cannot change; add a stage with a new name instead",
        },
        {"rule": "has(self.data) == has(oldSelf.data) && (!has(self.data) || self.data == oldSelf.data)", "message": "a stage's `data` cannot change; add a stage with a new name instead"},
    ],
    "RewardSource": [
        {
            "rule": "[has(self.model), has(self.exactMatch), has(self.contains), has(self.numeric), has(self.regex), "
                    "has(self.length), has(self.python)].filter(x, x).size() == 1",
            "message": "a reward source sets exactly one of model, exactMatch, contains, numeric, regex, length, python",
        },
    ],
    "GenerateEval": [
        {"rule": "!has(self.samples) || self.samples <= 1 || (has(self.temperature) && self.temperature > 0.0)",
         "message": SAMPLES_NEED_TEMPERATURE_MESSAGE, "fieldPath": ".samples"},
        cel_no_uri_credential("path"),
    ],
    # No credential at rest (credentials.py): in any source or destination URI, nor a literal value
    # of a variable named like a secret.
    "PythonReward": [cel_no_uri_credential("path")],
    "ExportSpec": [cel_no_uri_credential("to")],
    "EnvVar": [CEL_NO_SECRET_ENV_VALUE],
    "RlSpec": [
        {
            "rule": "!has(self.lossType) || (has(self.algorithm) && self.algorithm == 'grpo')",
            "message": "rl.lossType is a grpo setting (TRL's GRPO loss formulations); rloo and ppo have their own",
        },
        {
            "rule": "!has(self.selectBy) || self.selectBy != 'audit' || has(self.audit)",
            "message": "rl.selectBy audit needs rl.audit: the judge whose best score picks the model",
        },
        {
            "rule": "!(self.algorithm in ['rloo', 'grpo']) || self.numGenerations >= 2",
            "message": "rloo and grpo compare completions of one prompt: numGenerations must be at least 2",
        },
        {
            "rule": "!has(self.generation) || self.generation != 'vllm' || !has(self.algorithm) || self.algorithm != 'ppo'",
            "message": VLLM_PPO_MESSAGE,
        },
    ],
    "ModelSource": [
        {
            "rule": "(has(self.config) ? 1 : 0) + (has(self.path) ? 1 : 0) + (has(self.hubId) ? 1 : 0) == 1",
            "message": "set exactly one of config, path, hubId",
        },
        *({"rule": f"!has(self.{f}) || ({CEL_KNOWN_SCHEME.format(f='self.' + f)})", "message": UNKNOWN_SCHEME_MESSAGE,
           "fieldPath": f".{f}"} for f in ("path", "tokenizer")),
        cel_no_uri_credential("path"), cel_no_uri_credential("tokenizer"), cel_no_uri_credential("hubId", "hf"),
    ],
    "DataSpec": [
        *({"rule": f"!has(self.{f}) || ({CEL_KNOWN_SCHEME.format(f='self.' + f)})", "message": UNKNOWN_SCHEME_MESSAGE,
           "fieldPath": f".{f}"} for f in ("path", "evalPath")),
        cel_no_uri_credential("path"), cel_no_uri_credential("evalPath"),
        {"rule": "has(self.path) != has(self.mixture)", "message": MIXTURE_MESSAGE},
    ],
    "MlflowSpec": [cel_no_uri_credential("trackingUri")],
    "MixtureEntry": [
        {"rule": CEL_KNOWN_SCHEME.format(f="self.path"), "message": UNKNOWN_SCHEME_MESSAGE, "fieldPath": ".path"},
        cel_no_uri_credential("path"),
    ],
    "Gate": [{"rule": "has(self.value) != has(self.valueFrom)", "message": "a gate needs exactly one of `value` or `valueFrom`"}],
    "Storage": [{"rule": "has(self.claimName) != has(self.claim)", "message": "set exactly one of claimName or claim"}],
}

# Lists whose items the API server correlates by key across updates (`x-kubernetes-list-type:
# map`): transition rules on their items compare each item with the old item of the same key.
LIST_MAP_KEYS: dict[tuple[str, str], list[str]] = {("PipelineSpec", "stages"): ["name"]}

PRINTER_COLUMNS = [
    {"name": "Stage", "type": "string", "jsonPath": ".status.currentStage", "description": "The running stage."},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress", "description": "Stages done out of all."},
    {"name": "Ckpt-Step", "type": "integer", "jsonPath": ".status.checkpointStep", "description": "Last checkpoint step of the running stage."},
    {"name": "Ckpt-Age", "type": "date", "jsonPath": ".status.checkpointTime", "description": "Age of that checkpoint."},
    {"name": "ETA", "type": "string", "jsonPath": ".status.eta", "description": "Time until the pipeline ends, estimated."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Convert one pydantic JSON Schema node into a structural OpenAPI v3.0 node."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        merged = {**defs[name], **{k: v for k, v in schema.items() if k != "$ref"}}
        return structural(merged, defs)
    alternatives = schema.get("anyOf") or schema.get("oneOf")
    if alternatives:
        kept = [a for a in alternatives if a.get("type") != "null"]
        if len(kept) != 1:
            raise ValueError(f"cannot express a union of {len(kept)} types in a structural schema: {schema}")
        # Optional fields are omitted in YAML rather than set to null, so the null alternative
        # (and its `default: null`) is simply dropped.
        rest = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
        if rest.get("default", ...) is None:
            rest.pop("default")
        return structural({**kept[0], **rest}, defs)

    out: dict[str, Any] = {}
    title = schema.get("title")
    for key, value in schema.items():
        if key in DROPPED:
            continue
        if key == "properties":
            out[key] = {name: structural(sub, defs) for name, sub in value.items()}
            for name, keys in ((n, k) for (t, n), k in LIST_MAP_KEYS.items() if t == title and n in out[key]):
                out[key][name]["x-kubernetes-list-type"] = "map"
                out[key][name]["x-kubernetes-list-map-keys"] = keys
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = structural(value, defs)
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if out.get("type") == "object" and "properties" in out and "additionalProperties" in out:
        out.pop("additionalProperties")  # extra="forbid": structural schemas forbid unknown fields already
    if title in CEL_RULES and "properties" in out:
        out["x-kubernetes-validations"] = CEL_RULES[title]
    return out


def model_schema(model: type) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}))


def crd() -> dict[str, Any]:
    spec = model_schema(PipelineSpec)
    status = model_schema(PipelineStatus)
    status.pop("required", None)  # the operator fills status over time
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "plural": PLURAL, "singular": SINGULAR, "shortNames": SHORT_NAMES, "categories": ["refinery"]},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A training pipeline: stages of the LLM recipe run as Jobs on one shared volume.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def render() -> str:
    header = "# Generated by `refinery crd` from sdk/refinery/api/v1alpha1.py. Do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)
