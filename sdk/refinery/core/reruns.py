"""Which stages to train again: the `refinery.dev/rerun-from` annotation and changed stage specs.

A re-run starts a new *run* of a stage (`status.stages[].run` + 1) whose attempts continue the
stage's attempt numbers (`firstAttempt` marks where the run begins, so Job names never repeat)
and whose files live in `<stage>/reruns/<run>/` (core/naming.py). Upstream stages keep their
outputs; every stage downstream of a re-run stage is re-run too, since its input changes.

The annotation is consumed by recording its value in `status.rerunRequest`: a value other than
the one recorded is a new request. Its form is `<stage>` or `<stage>@<anything>` — to re-run the
same stage again, change the part after `@` (like `kubectl rollout restart`'s timestamp). The
status is the record, so an operator restarted at any moment neither loses nor repeats a request.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from ..api.v1alpha1 import Stage

RERUN_ANNOTATION = "refinery.dev/rerun-from"
# What a stage trains: a change re-runs it. Not the name (its identity), nor what only changes
# how it runs (resources, retries), when dependants may start (gate) or the order (dependsOn).
NOT_HASHED = {"name", "resources", "retries", "gate", "depends_on"}


def spec_hash(stage: Stage) -> str:
    """Stable hash of what the stage trains. Fields left at their defaults are left out, so a new
    optional API field (with a default) does not re-run every stage after an operator upgrade."""
    content = stage.model_dump(mode="json", by_alias=True, exclude_defaults=True, exclude=NOT_HASHED)
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def requested_stage(value: str | None) -> str | None:
    """`sft` or `sft@2` -> `sft`."""
    if not value:
        return None
    return value.split("@", 1)[0].strip() or None


def downstream(stages: Iterable[Stage], roots: Iterable[str]) -> set[str]:
    """The roots and every stage that depends on them, directly or not."""
    stages = list(stages)
    found = set(roots)
    changed = True
    while changed:  # at most len(stages) rounds: the graph is a DAG of <= MAX_STAGES stages
        changed = False
        for stage in stages:
            if stage.name not in found and found.intersection(stage.dependencies):
                found.add(stage.name)
                changed = True
    return found
