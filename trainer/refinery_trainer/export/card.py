"""The model card (`README.md`) of an exported model: where the model came from, in full.

    card = model_card(Lineage.from_run(spec, outputs, data_root), stage="rlhf", version="0.1.0")

It lists the pipeline's stages in order (the exported stage's ancestry, then any other stage,
such as the eval stage that judged it), each with its inputs, data files (with their SHA-256, so
a reader can tell which revision of a file trained it), hyperparameters and final metrics; the
eval results per model; the trainer image; and the Refinery version. Pure text from data: no
torch, no network.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from refinery.api.evaluation import EXPORT_STAGE
from refinery.api.run import RESULT_FILE
from refinery.api.v1alpha1 import PipelineSpec, Stage

HYPERPARAMETERS = ("maxSteps", "epochs", "learningRate", "warmupRatio", "batchSize", "gradientAccumulationSteps",
                   "seqLen", "seed", "precision", "lora")


@dataclass
class StageRecord:
    stage: Stage
    metrics: dict[str, float] = field(default_factory=dict)
    steps: int | None = None
    data: list[tuple[str, str, str | None]] = field(default_factory=list)  # (field, path, sha256)


@dataclass
class Lineage:
    pipeline: str
    image: str
    stages: list[StageRecord]

    @classmethod
    def from_run(cls, pipeline: str, spec: PipelineSpec, outputs: dict[str, str], data_root: Path) -> Lineage:
        """Each stage's spec with what it reported (`result.json` beside its `model/` output)."""
        records = []
        for stage in spec.stages:
            result = _read_result(outputs.get(stage.name))
            records.append(StageRecord(stage, result.get("metrics", {}), result.get("steps"), data_files(stage, data_root)))
        return cls(pipeline, spec.image, records)


def _read_result(output: str | None) -> dict:
    """The stage's result.json: beside its `model/` (or its eval.json, for an eval stage)."""
    if not output:
        return {}
    path = Path(output).parent / RESULT_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def data_files(stage: Stage, data_root: Path) -> list[tuple[str, str, str | None]]:
    """(spec field, path, sha256 or None when unreadable) of every data file the stage read."""
    pairs = []
    if stage.data is not None:
        pairs += [("data.path", stage.data.path), ("data.evalPath", stage.data.eval_path)]
        pairs += [(f"data.mixture[{j}] (weight {m.weight:g})", m.path) for j, m in enumerate(stage.data.mixture or [])]
    if stage.eval_ is not None and stage.eval_.generate is not None:
        pairs.append(("eval.generate.path", stage.eval_.generate.path))
    if stage.eval_ is not None and stage.eval_.harness is not None:
        pairs.append(("eval.harness.taskDir", stage.eval_.harness.task_dir))
    return [(f, p, sha256_of(data_root / p)) for f, p in pairs if p]


def sha256_of(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def ancestry(spec_stages: list[Stage], name: str) -> list[str]:
    """The stages whose models led to `name` (its `from` chain and their reward models), in spec order."""
    by_name = {s.name: s for s in spec_stages}
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen or current not in by_name:
            continue
        seen.add(current)
        todo += [s for s in (by_name[current].from_, by_name[current].reward_model) if s]
    return [s.name for s in spec_stages if s.name in seen]


def model_card(lineage: Lineage, stage: str, version: str) -> str:
    stages = [r.stage for r in lineage.stages]
    exported = next(r for r in lineage.stages if r.stage.name == stage)
    chain = ancestry(stages, stage)
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        f"tags: [refinery, {', '.join(dict.fromkeys(str(s.type) for s in stages if s.name in chain))}]",
        "---",
        "",
        f"# {lineage.pipeline}: stage `{stage}` ({exported.stage.type})",
        "",
        f"Trained and exported by Refinery {version} (pipeline `{lineage.pipeline}`, trainer image `{lineage.image}`).",
        f"The model is the final model of stage `{stage}`; it was made by {' → '.join(f'`{n}`' for n in chain)}.",
        "",
        "## Stages, in order",
        "",
        "| # | stage | type | starts from | steps | in this model's lineage |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(lineage.stages, 1):
        s = r.stage
        start = s.from_ or (s.eval_ and ", ".join(s.eval_.models)) or _model_source(s)
        lines.append(f"| {i} | `{s.name}` | {s.type} | {start} | {r.steps if r.steps is not None else '-'} | "
                     f"{'yes' if s.name in chain else 'no'} |")
    for r in lineage.stages:
        lines += ["", *stage_section(r)]
    evals = [r for r in lineage.stages if r.stage.eval_ is not None]
    for r in evals:
        lines += ["", *eval_section(r)]
    lines += ["", "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
              'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")  # with its chat template',
              "```", ""]
    return "\n".join(lines)


def _model_source(stage: Stage) -> str:
    m = stage.model
    if m is None:
        return "-"
    if m.config is not None:
        return f"a fresh {m.config.architecture} ({m.config.num_hidden_layers} layers, width {m.config.hidden_size})"
    return m.path or m.hub_id or "-"


def stage_section(r: StageRecord) -> list[str]:
    s = r.stage
    lines = [f"### `{s.name}` ({s.type})", ""]
    if s.reward_model:
        lines.append(f"- reward model: `{s.reward_model}`")
    for field_name, path, digest in r.data:
        lines.append(f"- {field_name}: `{path}`" + (f" (sha256 `{digest}`)" if digest else " (not readable at export)"))
    training = s.training.dump()
    hyper = {k: training[k] for k in HYPERPARAMETERS if k in training}
    if s.type not in ("eval", EXPORT_STAGE):
        lines.append("- hyperparameters: " + ", ".join(f"{k}={_value(v)}" for k, v in hyper.items()))
    if s.rl is not None:
        lines.append("- rl: " + ", ".join(f"{k}={_value(v)}" for k, v in s.rl.dump().items()))
    if s.dpo is not None:
        lines.append("- dpo: " + ", ".join(f"{k}={_value(v)}" for k, v in s.dpo.dump().items()))
    if s.gate is not None:
        lines.append(f"- gate: {s.gate.describe()}")
    if r.metrics and s.eval_ is None:
        lines.append("- final metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(r.metrics.items())))
    elif not r.metrics:
        lines.append("- final metrics: none reported")
    return lines


def eval_section(r: StageRecord) -> list[str]:
    """The eval stage's scores as a table: one row per model, one column per score."""
    table: dict[str, dict[str, float]] = {}
    for key, value in r.metrics.items():
        model, _, score = key.partition(".")
        table.setdefault(model, {})[score] = value
    scores = sorted({k for row in table.values() for k in row})
    lines = [f"## Evaluation (stage `{r.stage.name}`)", "", "| model | " + " | ".join(scores) + " |",
             "|---|" + "---|" * len(scores)]
    for model, row in table.items():
        lines.append(f"| `{model}` | " + " | ".join(f"{row[s]:.4g}" if s in row else "-" for s in scores) + " |")
    return lines


def _value(v) -> str:
    return json.dumps(v, separators=(",", ":")) if isinstance(v, (dict, list)) else str(v)
