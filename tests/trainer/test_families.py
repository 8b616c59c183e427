"""The model families users start from (tests/families.py), served as hf://acme/tiny-<family>@<commit>
from an offline hub cache: CI's slice of the family matrix (benchmarks/family_matrix.py runs all of it).

The slice: Gemma 2 with LoRA — a sentencepiece-style tokenizer that adds BOS, a template without
generation markers and no system role, tied embeddings, no sdpa attention — through sft on
prompt/completion and on `messages`; GPT-2 with LoRA — Conv1D layers, no pad token,
no chat template — through sft and dpo. Each sft's held-out loss must fall. Which modules LoRA
adapts by default is checked for every family (no training needed).
"""

from __future__ import annotations

import pytest

from tests.families import FAMILIES, build_family, build_model, build_tokenizer, family_pipeline, publish, \
    run_pipeline, write_family_data


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_lora_adapts_every_linear_layer_of_each_architecture(family):
    """peft's "all-linear" (training.lora without targetModules) finds GPT-2's Conv1D and Phi-3's fused
    qkv_proj/gate_up_proj as it finds Llama's separate projections; never the output layer."""
    from peft import get_peft_model

    from refinery.api.training import LoraSpec
    from refinery_trainer.lora import lora_config

    model = build_model(FAMILIES[family], build_tokenizer(FAMILIES[family]))
    adapted = get_peft_model(model, lora_config(LoraSpec()))
    names = {name.split(".")[-2] for name, _ in adapted.named_modules() if name.endswith(".lora_A")}
    assert names == set(FAMILIES[family].lora_targets)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    commits = {f: publish(root / "hub", f, build_family(f, root / "models" / f)) for f in ("gemma2", "gpt2")}
    return root, commits, write_family_data(root / "data")


def run_family(hub, family: str, stages: tuple[str, ...]) -> dict:
    root, commits, data = hub
    manifest = family_pipeline(f"{family}-lora", family, commits[family], lora=True, stages=stages,
                               steps={"sft": 25, "dpo": 6})
    code, status, output = run_pipeline(manifest, root / "work", data, root / "hub", timeout=600)
    assert code == 0 and status["phase"] == "Succeeded", output[-3000:]
    assert status["sources"][0]["resolved"] == commits[family]  # the pinned commit, read from the cache
    return {s["name"]: s for s in status["stages"]}


@pytest.mark.slow
def test_gemma2_with_lora_learns_prompt_completion_and_chat(hub):
    stages = run_family(hub, "gemma2", ("sft", "chat"))
    for name in ("sft", "chat"):
        metrics = stages[name]["metrics"]
        assert metrics["evalLoss"] < metrics["initialEvalLoss"] - 0.2, (name, metrics)
    assert all(s.get("lastFailure") is None for s in stages.values())


@pytest.mark.slow
def test_gpt2_with_lora_on_its_conv1d_layers_learns_then_trains_dpo(hub):
    stages = run_family(hub, "gpt2", ("sft", "dpo"))
    sft = stages["sft"]["metrics"]
    assert sft["evalLoss"] < sft["initialEvalLoss"] - 0.2, sft
    dpo = stages["dpo"]["metrics"]
    assert dpo["evalMargin"] > dpo["initialEvalMargin"], dpo
