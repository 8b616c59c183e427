"""Multi-process stages: DeepSpeed ZeRO from `stage.deepspeed`, and what every rank must do together.

    torchrun --nproc_per_node=2 -m refinery_trainer run --config stage.yaml     # DDP, or ZeRO with stage.deepspeed

    deepspeed_config(DeepSpeedSpec(zero_stage=3), resolve)   # the dict TrainingArguments(deepspeed=...) takes
    with gathered_parameters(model):                          # ZeRO-3: full weights on every rank, for saving
        ...
    barrier()                                                 # no-op in a single process

Under torchrun every rank runs the same stage workflow; transformers/TRL trainers shard the data
(DDP over gloo on CPU, NCCL on GPUs) or hand the model to DeepSpeed. Rank 0 alone writes
checkpoint markers, `model/`, result.json and progress records (`StageContext.is_main_process`).

The DeepSpeed config is built from the spec with `"auto"` for everything TrainingArguments already
knows (batch sizes, accumulation, clipping, bf16/fp16), so the two can never disagree; a
`configPath` file replaces it whole. ZeRO-3 saves a usable model because the config asks DeepSpeed
to gather the 16-bit weights on save (`Trainer.save_model`, used for checkpoints) and
`StageContext.save_final` gathers them itself (`gathered_parameters`) before rank 0 writes `model/`.

DeepSpeed on CPU: DeepSpeed's CPU accelerator falls back to gloo and trains, but accelerate only
initialises DeepSpeed's process group when it sees a GPU-like device: on a CPU-only host it
leaves the backend unset and counts one process per rank, so the batch-size check fails
("train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step * world_size").
`_enable_deepspeed_on_cpu` tells accelerate to use gloo there (accelerate 1.15
`PartialState._prepare_backend`). It matters for tests and CPU clusters only: GPU pods use NCCL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from refinery.api.v1alpha1 import DeepSpeedSpec

from .errors import StageError

log = logging.getLogger(__name__)

REASON_BAD_DEEPSPEED_CONFIG = "BadDeepSpeedConfig"


class DeepSpeedConfigError(StageError):
    """`stage.deepspeed` cannot be turned into a DeepSpeed config (unreadable file, impossible combination)."""

    reason = REASON_BAD_DEEPSPEED_CONFIG


def deepspeed_config(spec: DeepSpeedSpec, resolve: Callable[[str], Path], *, pin_memory: bool = False) -> dict[str, Any]:
    """The DeepSpeed config dict of `spec`; `resolve` turns `configPath` into a file path.

    `pin_memory`: page-locked host buffers for offloaded state (worth it only with a GPU).
    """
    if spec.config_path:
        return _read_config(resolve(spec.config_path))
    if spec.offload_params and spec.zero_stage != 3:
        raise DeepSpeedConfigError(
            f"deepspeed.offloadParams needs zeroStage 3 (weights are only partitioned at stage 3), got {spec.zero_stage}"
        )
    zero: dict[str, Any] = {"stage": spec.zero_stage}
    if spec.offload_optimizer:
        if spec.zero_stage == 0:
            raise DeepSpeedConfigError("deepspeed.offloadOptimizer needs zeroStage 1, 2 or 3 (stage 0 keeps no optimizer shards)")
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin_memory}
    if spec.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin_memory}
    if spec.zero_stage == 3:
        # Trainer.save_model (every checkpoint) writes full 16-bit weights, not only ZeRO shards.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        # "auto": filled in from TrainingArguments by transformers' HfTrainerDeepSpeedConfig.
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
    }


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DeepSpeedConfigError(f"deepspeed.configPath {path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise DeepSpeedConfigError(f"deepspeed.configPath {path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise DeepSpeedConfigError(f"deepspeed.configPath {path}: expected a JSON object, got {type(config).__name__}")
    return config


def training_args_kwargs(spec: DeepSpeedSpec | None, resolve: Callable[[str], Path], *, cuda: bool) -> dict[str, Any]:
    """`deepspeed=` (and `use_cpu=False`, which DeepSpeed needs even on CPU) for TrainingArguments; {} without DeepSpeed."""
    if spec is None:
        return {}
    config = deepspeed_config(spec, resolve, pin_memory=cuda)
    if not cuda:
        _enable_deepspeed_on_cpu()
    # use_cpu=True would make accelerate ignore the DeepSpeed plugin (AcceleratorState: `... and not cpu`).
    return {"deepspeed": config, "use_cpu": False}


def _enable_deepspeed_on_cpu() -> None:
    """Have accelerate run DeepSpeed over gloo on a CPU-only host (see the module docstring).

    Without torchrun (no LOCAL_RANK) a stage is a one-process world, set up the way the
    `deepspeed` launcher would.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    if "LOCAL_RANK" not in os.environ:
        for key, value in {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}.items():
            os.environ.setdefault(key, value)
    original = PartialState._prepare_backend
    if getattr(original, "_refinery_cpu", False):
        return

    def prepare_backend(self, cpu: bool = False, sagemaker_dp: bool = False, backend: str | None = None):
        backend, distributed_type = original(self, cpu, sagemaker_dp, backend)
        if backend is None and not cpu and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
            return "gloo", DistributedType.MULTI_CPU  # becomes DEEPSPEED once DeepSpeed's group is up
        return backend, distributed_type

    prepare_backend._refinery_cpu = True
    PartialState._prepare_backend = prepare_backend


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_zero3(model) -> bool:
    """The model's weights are partitioned by DeepSpeed ZeRO-3 (each rank holds a shard)."""
    parameters = getattr(model, "parameters", None)  # anything with save_pretrained can be saved
    return parameters is not None and any(hasattr(p, "ds_id") for p in parameters())


@contextlib.contextmanager
def gathered_parameters(model) -> Iterator[None]:
    """Inside: every weight of `model` whole on every rank (ZeRO-3 gathers them; a collective, so
    every rank must enter). Anything else: nothing to do."""
    if not is_zero3(model):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        yield


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def any_rank(flag: bool) -> bool:
    """Whether `flag` is true on any rank (every rank must call it: a collective; no-op in one process).

    SIGTERM reaches the ranks of a multi-node attempt at different moments (a suspension deletes
    every pod, a drain only one): a rank that stopped after its own step would save while its peers
    went on into the next step's all-reduce, and the checkpoint's barrier would meet a gradient
    collective. Asked once a step, the ranks stop after the same step and save that checkpoint together."""
    if world_size() <= 1:
        return flag
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    wanted = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(wanted, op=dist.ReduceOp.MAX)
    return bool(wanted.item())


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    import torch.distributed as dist

    if world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def plain_evaluation(trainer) -> Iterator[None]:
    """Evaluate a DeepSpeed trainer's model as a plain model while no DeepSpeed engine exists:
    before the first step, or after a rerun that only loaded the final checkpoint's weights.

    transformers evaluates an untrained DeepSpeed trainer by starting a ZeRO *inference* engine:
    it refuses that below ZeRO-3 ("ZeRO inference only makes sense with ZeRO Stage 3",
    `deepspeed_init(..., inference=True)`), and at ZeRO-3 training then reuses that engine, which
    has no optimizer ("'NoneType' object has no attribute 'backward'"). Without an engine the
    weights are whole on every rank, so the initial evaluation needs no DeepSpeed: the
    trainer's flag and transformers' global "ZeRO-3 is on" switch (which TRL's losses read to
    gather partitioned weights) are turned off while it runs.
    """
    if not getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "deepspeed", None) is not None:
        yield
        return
    from transformers.integrations import deepspeed as hf_deepspeed

    zero3_switch = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    trainer.is_deepspeed_enabled = False
    try:
        yield
    finally:
        trainer.is_deepspeed_enabled = True
        hf_deepspeed._hf_deepspeed_config_weak_ref = zero3_switch
