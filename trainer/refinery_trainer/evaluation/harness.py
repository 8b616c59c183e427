"""lm-evaluation-harness (PyPI `lm-eval`, the `eval` extra) against one model folder, offline.

    scores = harness_scores(ctx, HarnessEval(tasks=["animals"], task_dir="tasks"), Path(".../rlhf/model"))
    # {"animals/acc": 0.9, "animals/acc_norm": 0.9}

`taskDir` holds task YAMLs (the harness's own format); the harness runs with that folder as its
current directory, so a task's `dataset_kwargs: {data_files: {test: animals.jsonl}}` finds a
JSONL file next to its YAML — no hub, no network (`dataset_path: json` is a builder packaged with
`datasets`). Metric names are the harness's: `acc,none` (metric `acc`, filter `none`) becomes
`acc`; another filter is kept after an underscore (`exact_match_strict-match`). Standard errors
are left out: a gate or a dashboard wants the score.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path

from refinery.api.evaluation import HarnessEval

from ..errors import DataError, StageError

log = logging.getLogger(__name__)
REASON_HARNESS_FAILED = "HarnessFailed"


def flatten_results(results: dict[str, dict]) -> dict[str, float]:
    """The harness's `results` (per task: `{"acc,none": 0.5, "acc_stderr,none": 0.1, "alias": ...}`) as
    `<task>/<metric>` numbers."""
    out: dict[str, float] = {}
    for task, metrics in results.items():
        for key, value in metrics.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                continue
            metric, comma, filter_name = key.partition(",")
            if not comma or "_stderr" in metric:  # bookkeeping (sample_len, ...) and standard errors
                continue
            name = metric if filter_name in ("", "none") else f"{metric}_{filter_name}"
            out[f"{task}/{name}"] = float(value)
    return out


@contextlib.contextmanager
def working_directory(path: Path | None):
    if path is None:
        yield
        return
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def harness_scores(ctx, spec: HarnessEval, model_dir: Path) -> dict[str, float]:
    """Run the tasks on the model (batch `spec.batchSize`, on the GPU when there is one)."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise StageError("eval.harness needs lm-evaluation-harness: install refinery[eval] (PyPI lm-eval)",
                         REASON_HARNESS_FAILED) from None
    import torch

    task_dir = ctx.resolve(spec.task_dir) if spec.task_dir else None
    if task_dir is not None and not task_dir.is_dir():
        raise DataError(f"eval.harness.taskDir {task_dir}: no such folder")
    model, tokenizer = ctx.load_causal_lm(model_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lm = HFLM(pretrained=model.to(device), tokenizer=tokenizer, batch_size=spec.batch_size, device=device)
    manager = TaskManager(include_path=str(task_dir) if task_dir else None)
    unknown = [t for t in spec.tasks if t not in manager.all_tasks]
    if unknown:
        raise StageError(f"eval.harness.tasks: no task named {', '.join(unknown)}"
                         + (f" in {task_dir} or" if task_dir else "") + " among the harness's tasks", REASON_HARNESS_FAILED)
    with working_directory(task_dir):
        results = lm_eval.simple_evaluate(model=lm, tasks=list(spec.tasks), num_fewshot=spec.num_fewshot,
                                          limit=spec.limit, task_manager=manager, log_samples=False,
                                          bootstrap_iters=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                                          fewshot_random_seed=0)
    scores = flatten_results((results or {}).get("results", {}))
    log.info("eval: harness on %s: %s", model_dir, " ".join(f"{k}={v:.4g}" for k, v in scores.items()))
    return scores
