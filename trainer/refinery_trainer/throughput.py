"""Throughput of a stage: tokens per second and model FLOPs utilisation (MFU).

    flops = flops_per_token(ModelShape.of(model), seq_len=2048)   # training FLOPs per token
    peak = peak_tflops("NVIDIA H100 80GB HBM3")                    # 989.0 (bf16 dense), or None
    mfu(tokens_per_second=30_000, flops_per_token=flops, peak_tflops=peak, devices=8)

FLOPs per trained token, the count of PaLM (Chowdhery et al. 2022, appendix B), as torchtitan
and llm-foundry use it:

    6 x N  +  12 x L x H x S

- `N`: parameters that do matrix multiplications: every parameter but the input embedding (a
  lookup). The output layer is counted: it is a matmul over the vocabulary. 6 = 2 FLOPs per
  multiply-add x (1 forward + 2 backward: gradients of the inputs and of the weights).
- `12 x L x H x S`: attention's two S x S matmuls (QK^T and AV, 2 x 2 x H x S FLOPs per token
  each layer forward, x3 with the backward), `L` layers, `H` = heads x head size (the query
  width), `S` the run's sequence length (`training.seqLen`, capped at the model's positions).
  The causal mask is not discounted, as in the papers above, so figures compare with theirs.
Norms, activations, softmax and the optimiser are not counted (a few % at most).

MFU = tokens/s x FLOPs per token / (peak FLOP/s of one device x devices). Tokens are the real,
non-padding tokens the trainer counted. The peak is the vendor's dense bf16 (no sparsity) figure
for the GPU, looked up by its name (`PEAK_BF16_TFLOPS`), or given by `resources.gpuPeakTflops`
or `$REFINERY_GPU_PEAK_TFLOPS`; on a CPU, or a GPU not in the table, there is no MFU (absent,
not 0). Pure: the caller asks torch for the model and the device name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

PEAK_TFLOPS_ENV = "REFINERY_GPU_PEAK_TFLOPS"

# Dense bf16 tensor-core peak of one GPU, TFLOP/s, from the vendors' data sheets (the sparse figures
# they also print are twice these). Keys are matched against the words of `torch.cuda.get_device_name()`,
# in order: the first entry all of whose words appear wins, so variants come before the plain name.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("B300", 2500.0),
    ("GB200", 2500.0),
    ("B200", 2250.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("H200 NVL", 835.0),
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H800", 989.0),
    ("H20", 148.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("MI300X", 1307.0),
    ("MI325X", 1307.0),
)


def peak_tflops(device_name: str | None, override: float | None = None) -> float | None:
    """Dense bf16 peak of the named GPU: `override`, else `$REFINERY_GPU_PEAK_TFLOPS`, else the table;
    None for a CPU (no device name: an override never makes a CPU figure) or a GPU the table does not know."""
    if not device_name:
        return None
    if override:
        return float(override)
    env = os.environ.get(PEAK_TFLOPS_ENV, "").strip()
    if env:
        return float(env)
    words = {w.upper() for w in re.split(r"[^A-Za-z0-9]+", device_name) if w}
    for key, tflops in PEAK_BF16_TFLOPS:
        if all(w.upper() in words for w in key.split()):
            return tflops
    return None


@dataclass(frozen=True)
class ModelShape:
    """What the FLOPs count needs of a model."""

    matmul_params: int  # every parameter but the input embedding
    num_layers: int
    attention_width: int  # heads x head size (the query projection's width)

    @classmethod
    def of(cls, model) -> ModelShape:
        """The shape of a transformers model (a PEFT wrapper counts its base and adapters)."""
        config = model.config
        embedding = model.get_input_embeddings()
        embedding_params = sum(p.numel() for p in embedding.parameters()) if embedding is not None else 0
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        total = sum(p.numel() for p in model.parameters())
        return cls(total - embedding_params, config.num_hidden_layers, heads * head_dim)


def flops_per_token(shape: ModelShape, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token: 6 N + 12 L H S (see the module docstring)."""
    return 6.0 * shape.matmul_params + 12.0 * shape.num_layers * shape.attention_width * seq_len


def mfu(tokens_per_second: float, flops_per_token: float, peak_tflops: float | None, devices: int = 1) -> float | None:
    """Share (0-1) of the devices' peak that the model's FLOPs used; None without a known peak."""
    if not peak_tflops or tokens_per_second <= 0:
        return None
    return tokens_per_second * flops_per_token / (peak_tflops * 1e12 * max(1, devices))
