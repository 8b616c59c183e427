"""Tokens/s and MFU: the FLOPs count against a hand count and against torch's FLOP counter, the
peak table, and the figures a real stage reports (tokensPerSecond, never an MFU on a CPU)."""

from __future__ import annotations

import pytest

from refinery.api.v1alpha1 import ModelConfig
from refinery_trainer import cli
from refinery_trainer.throughput import ModelShape, flops_per_token, mfu, peak_tflops

from .conftest import TINY_MODEL, make_corpus, read_json, stage_run, write_config

# The example's pretrain model: hidden 64, 2 layers, 4 heads, MLP 256, vocabulary 512, untied output layer.
EXAMPLE = ModelConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                      max_position_embeddings=128)


class _Tokenizer:  # what build_model reads of a tokenizer
    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __len__(self):
        return 512


def _model(config: ModelConfig = EXAMPLE, attention: str = "eager"):
    from refinery_trainer.modeling import build_model

    model = build_model(config, _Tokenizer())
    model.config._attn_implementation = attention
    return model


def test_flops_per_token_matches_a_hand_count_for_the_example_model():
    # Per layer: q, k, v, o = 4 x 64 x 64; gate, up, down = 3 x 64 x 256; two norms of 64.
    per_layer = 4 * 64 * 64 + 3 * 64 * 256 + 2 * 64
    matmul_params = 2 * per_layer + 64 + 512 * 64  # layers, final norm, output layer (the input embedding is a lookup)
    assert ModelShape.of(_model()) == ModelShape(matmul_params=matmul_params, num_layers=2, attention_width=64)
    assert matmul_params == 164_160
    # 6 x 164,160 + 12 x 2 layers x 64 x 128 tokens of context
    assert flops_per_token(ModelShape.of(_model()), seq_len=128) == 6 * 164_160 + 12 * 2 * 64 * 128 == 1_181_568


def test_flops_per_token_matches_what_torch_counts_in_a_training_step():
    """Ground truth: torch's FlopCounterMode over one forward + backward of a real batch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model, batch, seq = _model(), 2, 128
    ids = torch.randint(3, 512, (batch, seq))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    counted = counter.get_total_flops() / (batch * seq)
    expected = flops_per_token(ModelShape.of(model), seq_len=seq)
    # What the formula leaves out (norm weights, counted as parameters but multiplied elementwise) is ~0.1%.
    assert counted == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("name, expected", [
    ("NVIDIA H100 80GB HBM3", 989.0),
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H200", 989.0),
    ("NVIDIA GH200 480GB", 989.0),
    ("NVIDIA H20", 148.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA L40S", 362.0),
    ("NVIDIA L4", 121.0),
    ("NVIDIA B200", 2250.0),
    ("Tesla T4", None),  # not in the table: no MFU rather than a wrong one
    (None, None),  # a CPU
])
def test_peak_table(name, expected, monkeypatch):
    monkeypatch.delenv("REFINERY_GPU_PEAK_TFLOPS", raising=False)
    assert peak_tflops(name) == expected


def test_peak_override_by_spec_then_environment_but_never_on_a_cpu(monkeypatch):
    monkeypatch.setenv("REFINERY_GPU_PEAK_TFLOPS", "700")
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 700.0
    assert peak_tflops("Tesla T4", override=65.0) == 65.0
    assert peak_tflops(None, override=65.0) is None


def test_mfu_arithmetic():
    # 8 GPUs at 989 TFLOP/s, a model of 7e9 x 6 FLOPs per token at 80,000 tokens/s: 42.5%
    assert mfu(80_000, 6 * 7e9, 989.0, devices=8) == pytest.approx(80_000 * 42e9 / (8 * 989e12))
    assert mfu(80_000, 6 * 7e9, None) is None and mfu(0, 1.0, 989.0) is None


def test_every_training_stage_reports_tokens_per_second_and_no_mfu_on_a_cpu(workspace):
    make_corpus(workspace / "corpus.txt", docs=80)
    run = stage_run(workspace, "pretrain", "pretrain", data={"path": "corpus.txt"}, model=TINY_MODEL,
                    training={"maxSteps": 6, "batchSize": 4, "seqLen": 32, "saveSteps": 6, "loggingSteps": 3})
    assert cli.main(["run", "--config", str(write_config(workspace / "run.yaml", run))]) == 0
    metrics = read_json(workspace / "p" / "pretrain" / "result.json")["metrics"]
    assert metrics["tokensPerSecond"] > 0 and "mfu" not in metrics
    # Pretraining blocks have no padding: 6 steps x 4 blocks x 32 tokens were trained on.
    logs = [line for line in (workspace / "p" / "pretrain" / "attempt-1" / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in line]
    assert all('"tokens_per_second"' in line for line in logs)
