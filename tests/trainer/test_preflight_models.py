"""Preflight of each stage's model (refinery_trainer.sources.model_checks): every misconfiguration
of issue 20 fails the initializer's check as `Misconfigured`, with what to change, from the model's
config and tokenizer alone — the folders here hold no weights at all.

The local-mode test shows the pipeline failing before any stage process starts, not retried.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from refinery.api.run import FetchRun
from refinery.api.v1alpha1 import Stage
from refinery_trainer.sources.fetch import run_fetch
from tests.families import FAMILIES, build_tokenizer
from tests.hubcache import add_folder

from .conftest import write_jsonl

CHAT = [{"role": "user", "content": "What does the cow say?"}, {"role": "assistant", "content": "moo"}]


def model_folder(root: Path, family: str, **config) -> Path:
    """config.json and the tokenizer of a tiny model of `family` (no weights: preflight never reads them)."""
    import transformers

    spec = FAMILIES[family]
    folder = root / family
    tokenizer = build_tokenizer(spec)
    tokenizer.save_pretrained(folder)
    fields = {"gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_positions=128)}.get(
        family, dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=128))
    getattr(transformers, spec.config_class)(vocab_size=len(tokenizer), **fields, **config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for family in ("gpt2", "gemma2", "mistral"):
        model_folder(root, family)
    cohere = root / "cohere"  # Command-R's family: transformers has no sequence-classification head for it
    shutil.copytree(root / "mistral", cohere)
    config = json.loads((cohere / "config.json").read_text())
    (cohere / "config.json").write_text(json.dumps({**config, "model_type": "cohere", "architectures": ["CohereForCausalLM"]}))
    bare = root / "bare"  # a tokenizer with no pad, EOS or UNK token
    shutil.copytree(root / "gpt2", bare)
    tok_config = json.loads((bare / "tokenizer_config.json").read_text())
    (bare / "tokenizer_config.json").write_text(json.dumps(
        {k: v for k, v in tok_config.items() if k not in ("pad_token", "eos_token", "unk_token", "bos_token")}))
    write_jsonl(root / "chat.jsonl", [{"messages": CHAT}] * 4)
    write_jsonl(root / "system.jsonl", [{"messages": [{"role": "system", "content": "Be brief."}, *CHAT]}] * 4)
    write_jsonl(root / "pc.jsonl", [{"prompt": "What does the cow say?", "completion": " moo"}] * 4)
    write_jsonl(root / "prefs.jsonl", [{"prompt": "What does the cow say?", "chosen": " moo", "rejected": " baa"}] * 4)
    write_jsonl(root / "chat_prefs.jsonl", [{"prompt": CHAT[:1], "chosen": CHAT[1:],
                                             "rejected": [{"role": "assistant", "content": "baa"}]}] * 4)
    return root


def check(models: Path, *stages: dict):
    return run_fetch(FetchRun(pipeline="p", pipeline_root=str(models / "p"), data_root=str(models),
                              stages=[Stage.model_validate(s) for s in stages]))


def sft(model: str, data: str = "chat.jsonl", **training) -> dict:
    return {"name": "sft", "type": "sft", "model": {"path": model}, "data": {"path": data}, "training": training}


@pytest.mark.parametrize(("stages", "expected"), [
    pytest.param([sft("gpt2")], "data chat.jsonl is `messages` (chat) data, and the tokenizer has no chat template",
                 id="messages-without-chat-template"),
    pytest.param([sft("bare", "pc.jsonl")], "the tokenizer has no pad token, and no EOS or UNK token to pad with",
                 id="no-pad-token"),
    pytest.param([sft("mistral", seqLen=512)], "training.seqLen 512 is more than the 128 positions of its model",
                 id="seq-len-beyond-positions"),
    pytest.param([sft("gpt2", "pc.jsonl", lora={"targetModules": ["q_proj", "v_proj"]})],
                 "training.lora.targetModules ['q_proj', 'v_proj'] are not modules of gpt2; its linear layers are "
                 "['c_attn', 'c_fc', 'c_proj']", id="lora-targets-missing"),
    pytest.param([sft("cohere", "pc.jsonl"), {"name": "reward", "type": "reward", "from": "sft",
                                              "data": {"path": "prefs.jsonl"}}],
                 "stage 'reward': transformers has no sequence-classification head for cohere", id="no-reward-head"),
    pytest.param([{"name": "dpo", "type": "dpo", "model": {"path": "gpt2"}, "data": {"path": "chat_prefs.jsonl"}}],
                 "data chat_prefs.jsonl holds conversational pairs (chosen/rejected as messages), and the tokenizer "
                 "has no chat template", id="conversational-pairs-without-chat-template"),
    pytest.param([sft("gemma2", "system.jsonl")], "the chat template refuses a conversation with roles ['system', "
                 "'user', 'assistant']: System role not supported", id="template-refuses-the-data"),
])
def test_each_misconfiguration_fails_preflight_as_misconfigured(models, stages, expected):
    result = check(models, *stages)
    assert (result.phase, result.reason, result.transient) == ("Failed", "Misconfigured", False)
    assert expected in result.message, result.message


def test_a_well_configured_chain_passes_and_says_how_it_pads(models):
    """reward starts from sft's output: checked against the root model (mistral, which has no pad token)."""
    result = check(models, sft("mistral", lora={"targetModules": ["q_proj", "v_proj"]}),
                   {"name": "reward", "type": "reward", "from": "sft", "data": {"path": "prefs.jsonl"},
                    "training": {"lora": {}}})
    assert result.phase == "Succeeded", result.message


def test_a_misconfigured_pipeline_fails_before_any_stage_and_is_not_retried(models, tmp_path):
    """Local mode, the model served as hf://…@<commit>: the initializer runs once, no stage process starts."""
    cache = tmp_path / "hub"
    commit = add_folder(cache, "acme/tiny-gpt2", models / "gpt2")
    stage = sft(f"hf://acme/tiny-gpt2@{commit}", str(models / "chat.jsonl"), maxSteps=5)
    manifest = {"apiVersion": "refinery.dev/v1alpha1", "kind": "TrainingPipeline", "metadata": {"name": "mis"},
                "spec": {"storage": {"claimName": "x"}, "stages": [stage]}}
    path = tmp_path / "mis.yaml"
    path.write_text(yaml.safe_dump(manifest))
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "refinery_operator.cli", "run", str(path), "--workdir",
                          str(tmp_path / "work"), "--quiet", "--metrics-port", "0"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode != 0
    status = json.loads((tmp_path / "work" / "mis" / "status.json").read_text())
    assert status["phase"] == "Failed"
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "Misconfigured" and "has no chat template" in failed["message"]
    assert not list((tmp_path / "work" / "mis").glob("sft/attempt-*"))  # no stage process ever started
    log = (tmp_path / "work" / "mis" / ".runs" / "sources.log").read_text()
    assert log.count("refinery-train fetch: Misconfigured") == 1  # the initializer ran once: not retried
