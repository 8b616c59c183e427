"""Start-up: a stage process pays only for the packages its stage uses.

    hidden = hide_unused_packages(run.stage)   # ["deepspeed", "vllm", "liger_kernel", ...] when unused

transformers, accelerate and TRL import optional packages whenever they are installed, used or
not: accelerate imports all of DeepSpeed (~1-2 s, and a warning about the accelerator) as soon as
a Trainer unwraps its model, TRL imports vLLM on import when present. The trainer image ships
them, so every stage would pay for them; pretrain, which feeds transformers' Trainer plain lists,
does not need `datasets` either, which transformers' Trainer imports whenever it is installed. Before the stage's libraries load, each optional
package the stage does not ask for is set to `None` in `sys.modules`: Python's own way to make
a module unimportable (`import` raises ImportError, `importlib.util.find_spec` returns None),
which is exactly what the libraries' availability checks read, so they take their
not-installed path. `restore()` undoes it (tests run several stages in one process).
"""

from __future__ import annotations

import sys

from refinery.api.v1alpha1 import RlSpec, Stage


def unused_packages(stage: Stage) -> list[str]:
    """The optional packages `stage` does not use."""
    rl = stage.rl or RlSpec()
    unused = []
    if stage.deepspeed is None:
        unused.append("deepspeed")
    if rl.generation != "vllm":
        unused.append("vllm")
    if not stage.training.liger_kernel:
        unused.append("liger_kernel")
    if stage.type == "pretrain":  # blocks are plain lists for transformers' Trainer; TRL's stages need datasets
        unused.append("datasets")
    return unused


def hide_unused_packages(stage: Stage) -> list[str]:
    """Make the stage's unused optional packages unimportable in this process; the ones hidden."""
    hidden = [name for name in unused_packages(stage) if name not in sys.modules]  # never one already loaded
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    return hidden


def restore(hidden: list[str]) -> None:
    for name in hidden:
        if sys.modules.get(name, False) is None:
            del sys.modules[name]
