"""Precision and batch arithmetic of a stage: what `training.precision` means on this machine.

    precision_kwargs("auto", cuda=True, bf16_supported=True)   # {"bf16": True, "fp16": False}
    precision_kwargs("bf16", cuda=False, bf16_supported=False) # raises PrecisionError
    effective_batch_size(8, 4, world_size=2)                    # 64 sequences per optimiser step

`auto` is bf16 mixed precision on a GPU that supports it (Ampere and newer) and fp32 everywhere
else — always fp32 on CPU, where the autocast kernels are slower than fp32 and fp16 has no
kernels at all. An explicit `bf16`/`fp16` is honoured on a GPU that can run it and is an error
otherwise, so a pipeline never silently trains in another precision than the one it asked for.
Pure functions: the caller asks torch what the device supports.
"""

from __future__ import annotations

from .errors import StageError

REASON_UNSUPPORTED_PRECISION = "UnsupportedPrecision"


class PrecisionError(StageError):
    """`training.precision` asks for something this device cannot run."""

    reason = REASON_UNSUPPORTED_PRECISION


def precision_kwargs(precision: str, *, cuda: bool, bf16_supported: bool) -> dict[str, bool]:
    """`bf16`/`fp16` flags of TrainingArguments (and every TRL config) for `training.precision`."""
    if precision == "auto":
        precision = "bf16" if cuda and bf16_supported else "fp32"
    if precision in ("bf16", "fp16") and not cuda:
        raise PrecisionError(
            f"training.precision={precision} needs a CUDA GPU, and this stage runs on CPU; "
            "use precision: auto or fp32 (or request resources.gpus)"
        )
    if precision == "bf16" and not bf16_supported:
        raise PrecisionError("training.precision=bf16: this GPU has no bf16 support (before Ampere); use fp16 or auto")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def effective_batch_size(batch_size: int, accumulation_steps: int, world_size: int = 1) -> int:
    """Sequences per optimiser step: per-device batch x gradient accumulation x processes."""
    return batch_size * accumulation_steps * max(1, world_size)
