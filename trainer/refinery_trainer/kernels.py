"""Fast kernels of a stage: the attention implementation, Liger kernels, torch.compile, vLLM generation.

    attention_implementation("auto", cuda=True, half_precision=True)   # "flash_attention_2" when flash-attn is installed
    attention_implementation("auto", cuda=False, half_precision=False) # "sdpa"
    kernel_training_kwargs(training, cuda=True)   # {"use_liger_kernel": ..., "torch_compile": ...} for TrainingArguments

- `training.attention: auto` is FlashAttention 2 on a CUDA GPU training in bf16/fp16 when the
  `flash-attn` package is installed (FlashAttention has no fp32 or CPU kernels), else PyTorch's
  `sdpa` (which itself picks its flash or memory-efficient kernel on a GPU). An explicit
  `flash_attention_2` without the package, or on a CPU, fails the stage before any model loads.
  Every implementation keeps packed rows exact: FlashAttention through the sequence boundaries
  the collator passes (`cu_seq_lens`), `sdpa`/`eager` through the block-diagonal mask that
  transformers builds from the restarting position ids.
- `training.ligerKernel`: Liger's Triton kernels (RMSNorm, RoPE, SwiGLU) patched into the model
  by transformers (`use_liger_kernel`). Triton needs a GPU: on a CPU, or without the
  `liger-kernel` package (extra `gpu`), the stage fails with reason `UnsupportedKernel`.
- `training.compile`: `torch.compile` of the model (inductor) by the Trainer (`torch_compile`).
  It runs on a CPU too (inductor builds C++ with the local compiler), paying compile time at
  the first steps; worth it on a GPU for runs of more than a few hundred steps.
- `rl.generation: vllm` (rloo, grpo): completions sampled by vLLM inside the training process
  (TRL's colocate mode) instead of transformers' `generate`. Needs a GPU and the `vllm` package
  (the Dockerfile's `trainer-vllm` target); refused with reason `UnsupportedKernel` otherwise.
"""

from __future__ import annotations

import importlib.util

from .errors import StageError

REASON_UNSUPPORTED_KERNEL = "UnsupportedKernel"
FLASH_ATTENTION = "flash_attention_2"


class KernelError(StageError):
    """A kernel the spec asks for cannot run here (no GPU, or its package is not installed)."""

    reason = REASON_UNSUPPORTED_KERNEL


def is_installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def attention_implementation(choice: str, *, cuda: bool, half_precision: bool) -> str:
    """The `attn_implementation` models are loaded with, for `training.attention`."""
    flash_ok = cuda and half_precision and is_installed("flash_attn")
    if choice == "auto":
        return FLASH_ATTENTION if flash_ok else "sdpa"
    if choice == FLASH_ATTENTION and not flash_ok:
        why = ("needs a CUDA GPU" if not cuda else "needs bf16 or fp16 (training.precision)" if not half_precision
               else "needs the flash-attn package in the trainer image")
        raise KernelError(f"training.attention={choice} {why}; use attention: auto or sdpa")
    return choice


def kernel_training_kwargs(liger_kernel: bool, compile: bool, *, cuda: bool) -> dict[str, bool]:
    """TrainingArguments flags of `training.ligerKernel` and `training.compile` (refused where they cannot run)."""
    if liger_kernel and not cuda:
        raise KernelError("training.ligerKernel needs a CUDA GPU (Liger's kernels are Triton); remove it on CPU")
    if liger_kernel and not is_installed("liger_kernel"):
        raise KernelError("training.ligerKernel needs the liger-kernel package in the trainer image "
                          "(the Dockerfile's trainer-vllm target, or pip install 'refinery[kernels]'); remove it or use "
                          "an image that has it")
    return {"use_liger_kernel": liger_kernel, "torch_compile": compile}


def generation_kwargs(generation: str, *, cuda: bool) -> dict:
    """RLOOConfig/GRPOConfig kwargs of `rl.generation`: vLLM in the training processes (TRL's colocate
    mode: each rank runs a vLLM engine on its own GPU, weights synced before every generation)."""
    if generation != "vllm":
        return {}
    if not cuda:
        raise KernelError("rl.generation=vllm needs a CUDA GPU; use generation: hf on CPU")
    if not is_installed("vllm"):
        raise KernelError("rl.generation=vllm needs the vllm package: run the trainer-vllm image (Dockerfile target "
                          "trainer-vllm, vLLM 0.30.0) or pip install 'refinery[vllm]'; or use generation: hf")
    # A share of the GPU for vLLM's weights and KV cache; the rest stays for training. The policies
    # here are small (the example's, a ~0.5B in benchmarks/gpu_suite.py): 0.3 is TRL's default.
    return {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3}
