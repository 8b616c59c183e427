"""What the API server checks when a TrainingPipeline is applied, done offline.

`refinery validate` runs the same three layers a cluster would, so a manifest that passes here
is admitted there and runs:

1. the CRD's OpenAPI schema, with unknown fields rejected as `kubectl apply` does (strict field
   validation) — a structural schema cannot say `additionalProperties: false` itself;
2. the CRD's CEL rules (`x-kubernetes-validations`), evaluated with cel-python on the object
   after schema defaulting, which is the order the API server uses;
3. the operator's own semantic checks (the pydantic models: cycles and whatever CEL cannot say).

Every problem names its field path. Nothing here imports kopf or a Kubernetes client.
"""

from __future__ import annotations

import functools
from typing import Any

from .crd import crd


@functools.cache
def openapi_schema() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def strict(node: dict[str, Any], top: bool = True) -> dict[str, Any]:
    """The schema with unknown fields forbidden below the top level (metadata stays open)."""
    node = dict(node)
    if "properties" in node:
        node["properties"] = {
            k: v if (top and k == "metadata") else strict(v, top=False) for k, v in node["properties"].items()
        }
        node["additionalProperties"] = False
    if isinstance(node.get("items"), dict):
        node["items"] = strict(node["items"], top=False)
    return node


def with_defaults(obj: Any, node: dict[str, Any]) -> Any:
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


def schema_problems(manifest: dict[str, Any]) -> list[str]:
    from openapi_schema_validator import OAS30Validator

    problems = []
    for error in OAS30Validator(strict(openapi_schema())).iter_errors(manifest):
        path = json_path(error.absolute_path)
        if error.validator == "additionalProperties":
            known = set((error.schema.get("properties") or {}).keys())
            for name in sorted(set(error.instance) - known):
                problems.append(f"{join(path, name)}: unknown field (misspelt?)")
        else:
            problems.append(f"{path or '(top level)'}: {error.message}")
    return problems


@functools.cache
def _program(rule: str):
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(rule))


def is_transition_rule(rule: dict[str, Any]) -> bool:
    return "oldSelf" in rule["rule"]


def cel_problems(obj: Any, node: dict[str, Any], path: str = "", old: Any = None) -> list[str]:
    """Evaluate every `x-kubernetes-validations` rule on the part of `obj` it is attached to.

    `old` is the same part of the stored object on an update (None on a create, or where the API
    server cannot correlate old and new: items of lists that are not map lists). Transition rules
    (those naming `oldSelf`) run only where there is an old value, as on the API server.
    """
    import celpy

    problems = []
    for rule in node.get("x-kubernetes-validations", []):
        if is_transition_rule(rule) and old is None:
            continue
        where = path + rule.get("fieldPath", "")
        activation = {"self": celpy.json_to_cel(obj)}
        if old is not None:
            activation["oldSelf"] = celpy.json_to_cel(old)
        try:
            ok = _program(rule["rule"]).evaluate(activation)
        except celpy.CELEvalError as err:
            problems.append(f"{where}: rule {rule['rule']!r} could not be evaluated: {err.args[0]}")
            continue
        if not ok:
            problems.append(f"{where}: {rule['message']}")
    if isinstance(obj, dict):
        for name, sub in (node.get("properties") or {}).items():
            if name in obj:
                before = old.get(name) if isinstance(old, dict) else None
                problems += cel_problems(obj[name], sub, join(path, name), before)
    elif isinstance(obj, list) and isinstance(node.get("items"), dict):
        keys = node.get("x-kubernetes-list-map-keys") if node.get("x-kubernetes-list-type") == "map" else None
        olds = {_key(o, keys): o for o in old if isinstance(o, dict)} if keys and isinstance(old, list) else {}
        for i, item in enumerate(obj):
            before = olds.get(_key(item, keys)) if keys and isinstance(item, dict) else None
            problems += cel_problems(item, node["items"], f"{path}[{i}]", before)
    return problems


def _key(item: dict[str, Any], keys: list[str]) -> tuple:
    return tuple(item.get(k) for k in keys)


def admission_problems(manifest: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """What the API server would refuse: schema first; CEL only on a schema-valid object (as there).

    With `old` (the stored object), this is an update: transition rules compare the two.
    """
    problems = schema_problems(manifest)
    if problems:
        return problems
    spec_node = openapi_schema()["properties"]["spec"]
    old_spec = with_defaults(old.get("spec"), spec_node) if old else None
    return cel_problems(with_defaults(manifest.get("spec"), spec_node), spec_node, "spec", old_spec)


def json_path(parts) -> str:
    out = ""
    for part in parts:
        out = f"{out}[{part}]" if isinstance(part, int) else join(out, str(part))
    return out


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
