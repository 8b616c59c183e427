"""Tiny random models of the families users start from, each with a tokenizer shaped like its family's,
published to an offline hub cache (tests/hubcache.py) as `hf://acme/tiny-<family>@<commit>`.

    folder = build_family("phi3", tmp / "phi3")            # config.json, weights, tokenizer, chat template
    commit = publish(cache, "phi3", folder)                 # hf://acme/tiny-phi3@<commit> offline

What is shaped like the family (what trips a trainer up), not its size: the architecture's own
transformers config (GPT-2's Conv1D `c_attn`, Phi-3's fused `qkv_proj`/`gate_up_proj`, Gemma 2's
soft-capping and tied embeddings), the special tokens and which of them the family has (a pad token
or none; BOS added to plain text or not), a byte-level BPE (Llama 3, Qwen, GPT-2) or a
sentencepiece-style one (▁ for spaces: Mistral, Gemma, Phi-3), and a chat template of the family's
shape without `{% generation %}` markers, written here (not TRL's verbatim copies, which TRL would
patch itself). GPT-2 has no chat template, as on the hub. The vocabulary is trained on the example
data, so every family tokenizes it into the same kind of few hundred tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tests.hubcache import add_folder

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_DATA = REPO / "examples" / "data"
VOCAB = 320
HIDDEN = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=128)

LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
CHATML = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
          "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
GEMMA = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
         "{{ raise_exception('System role not supported') }}{% endif %}"
         "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
         "<start_of_turn>{{ role }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
         "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
# Phi-3's own quirk kept: EOS after the last turn unless a generation prompt follows (the real
# template's `{% else %}{{ eos_token }}`), so a conversation's prefixes are not prefixes of it.
PHI3 = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% else %}{{ eos_token }}{% endif %}")
MISTRAL = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
           "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}"
           "{% else %}{{ raise_exception('Only user and assistant roles are supported') }}{% endif %}{% endfor %}")


@dataclass(frozen=True)
class Family:
    name: str
    config_class: str  # transformers config class
    byte_level: bool  # byte-level BPE (GPT-2 style) or sentencepiece-style (▁ for spaces)
    specials: dict[str, str | None]  # bos/eos/pad/unk (None: the family has none)
    extra: tuple[str, ...] = ()  # the template's special tokens
    add_bos: bool = False  # the tokenizer prepends BOS to plain text
    template: str | None = None
    system: bool = True  # the template takes a system message
    config: dict = field(default_factory=dict)  # architecture-specific config fields
    lora_targets: tuple[str, ...] = ()  # what LoRA's "all-linear" adapts in this architecture


FAMILIES = {
    "llama": Family("llama", "LlamaConfig", True,
                    {"bos": "<|begin_of_text|>", "eos": "<|eot_id|>", "pad": None, "unk": None},
                    ("<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"), add_bos=True, template=LLAMA3,
                    config={"tie_word_embeddings": False},
                    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
    "qwen2": Family("qwen2", "Qwen2Config", True,
                    {"bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>", "unk": None}, ("<|im_start|>",),
                    template=CHATML, config={"tie_word_embeddings": True},
                    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
    "gemma2": Family("gemma2", "Gemma2Config", False,
                     {"bos": "<bos>", "eos": "<eos>", "pad": "<pad>", "unk": "<unk>"},
                     ("<start_of_turn>", "<end_of_turn>"), add_bos=True, template=GEMMA, system=False,
                     config={"head_dim": 16, "sliding_window": 64, "query_pre_attn_scalar": 16},
                     lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
    "phi3": Family("phi3", "Phi3Config", False,
                   {"bos": "<s>", "eos": "<|endoftext|>", "pad": "<|endoftext|>", "unk": "<unk>"},
                   ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"), template=PHI3,
                   config={"tie_word_embeddings": False}, lora_targets=("qkv_proj", "o_proj", "gate_up_proj", "down_proj")),
    "mistral": Family("mistral", "MistralConfig", False, {"bos": "<s>", "eos": "</s>", "pad": None, "unk": "<unk>"},
                      ("[INST]", "[/INST]"), add_bos=True, template=MISTRAL, system=False,
                      config={"tie_word_embeddings": False},
                      lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
    "gpt2": Family("gpt2", "GPT2Config", True,
                   {"bos": "<|endoftext|>", "eos": "<|endoftext|>", "pad": None, "unk": "<|endoftext|>"},
                   template=None, lora_targets=("c_attn", "c_proj", "c_fc")),
}


def corpus_texts() -> list[str]:
    """Every string of the example data, to train each family's vocabulary on."""
    import json

    texts = []
    for f in sorted(EXAMPLE_DATA.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            texts += [v for v in json.loads(line).values() if isinstance(v, str)]
    return texts + [(EXAMPLE_DATA / "pretrain.txt").read_text()] + ["You are a helpful assistant.", "user model system"]


def build_tokenizer(family: Family):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    s = family.specials
    specials = list(dict.fromkeys(t for t in (s["pad"], s["bos"], s["eos"], s["unk"], *family.extra) if t))
    core = Tokenizer(models.BPE(unk_token=s["unk"]))
    if family.byte_level:
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        core.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:  # sentencepiece-style: spaces become ▁, every character of the corpus a base token
        core.normalizer = normalizers.Replace(" ", "▁")
        core.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
        core.decoder = decoders.Replace("▁", " ")
        alphabet = sorted(set("".join(corpus_texts())) | set("\n▁.,!?:[]/|<>-_'\"0123456789"))
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials, initial_alphabet=alphabet, show_progress=False)
    core.train_from_iterator(corpus_texts(), trainer=trainer)
    if family.add_bos:
        bos = s["bos"]
        core.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                            special_tokens=[(bos, core.token_to_id(bos))])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, model_max_length=HIDDEN["max_position_embeddings"],
                                  **{f"{k}_token": v for k, v in s.items() if v},
                                  extra_special_tokens=[t for t in family.extra])
    if family.template:
        tok.chat_template = family.template
    return tok


def build_model(family: Family, tokenizer, seed: int = 0):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    config_class = getattr(transformers, family.config_class)
    ids = {f"{k}_token_id": tokenizer.convert_tokens_to_ids(v) if v else None for k, v in family.specials.items()
           if k in ("bos", "eos", "pad")}
    if family.name == "gpt2":
        config = config_class(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=128, **ids)
    else:
        config = config_class(vocab_size=len(tokenizer), **HIDDEN, **ids, **family.config)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def build_family(name: str, folder: Path) -> Path:
    """A saved tiny model of the family: config, random weights, tokenizer (and chat template)."""
    family = FAMILIES[name]
    tokenizer = build_tokenizer(family)
    model = build_model(family, tokenizer)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def publish(cache: Path, name: str, folder: Path) -> str:
    """The saved model as hub repo `acme/tiny-<name>` in the offline cache; its commit."""
    return add_folder(cache, f"acme/tiny-{name}", folder)


# ---- a pipeline of every stage per family (the family matrix: benchmarks/family_matrix.py) -------

STEPS = {"sft": 40, "reward": 30, "dpo": 20, "rlhf": 6}


def chat_rows(rows: list[dict]) -> list[dict]:
    """prompt/completion rows as `messages`: one turn each, every third pair of rows as two turns."""
    def turns(row):
        return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"].strip()}]

    out, i = [], 0
    while i < len(rows):
        if i % 3 == 0 and i + 1 < len(rows):
            out.append({"messages": turns(rows[i]) + turns(rows[i + 1])})
            i += 2
        else:
            out.append({"messages": turns(rows[i])})
            i += 1
    return out


def write_family_data(folder: Path) -> Path:
    """The example data, plus the sft rows as chats (chat.jsonl, chat_eval.jsonl)."""
    import json
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for f in EXAMPLE_DATA.iterdir():
        shutil.copy(f, folder / f.name)
    for src, dst in (("sft.jsonl", "chat.jsonl"), ("sft_eval.jsonl", "chat_eval.jsonl")):
        rows = [json.loads(line) for line in (EXAMPLE_DATA / src).read_text().splitlines() if line.strip()]
        (folder / dst).write_text("".join(json.dumps(r) + "\n" for r in chat_rows(rows)))
    return folder


def family_pipeline(name: str, family: str, commit: str, lora: bool, stages=("sft", "chat", "reward", "dpo", "rlhf", "eval"),
                    steps: dict | None = None) -> dict:
    """A pipeline of `stages` from hf://acme/tiny-<family>@<commit>: sft on prompt/completion (`sft`) and on
    messages (`chat`, skipped for a family without a chat template); reward, dpo and rlhf from the chat sft
    (the prompt/completion one without a template); eval scores sft, dpo and rlhf."""
    steps = {**STEPS, **(steps or {})}
    has_chat = FAMILIES[family].template is not None and "chat" in stages
    base = "chat" if has_chat else "sft"
    train = {"learningRate": 3.0e-3, "batchSize": 8, "seqLen": 64, "loggingSteps": 10}
    lora_spec = {"lora": {"r": 8, "alpha": 16}} if lora else {}
    hub = {"path": f"hf://acme/tiny-{family}@{commit}"}

    def training(stage, **extra):
        return {**train, "maxSteps": steps[stage], "saveSteps": steps[stage], **lora_spec, **extra}

    all_stages = {
        "sft": {"name": "sft", "type": "sft", "model": hub, "data": {"path": "sft.jsonl", "evalPath": "sft_eval.jsonl"},
                "training": training("sft")},
        "chat": {"name": "chat", "type": "sft", "model": hub, "data": {"path": "chat.jsonl", "evalPath": "chat_eval.jsonl"},
                 "training": training("sft")},
        "reward": {"name": "reward", "type": "reward", "from": base,
                   "data": {"path": "preferences.jsonl", "evalPath": "preferences_eval.jsonl"},
                   "training": training("reward", batchSize=16)},
        "dpo": {"name": "dpo", "type": "dpo", "from": base,
                "data": {"path": "preferences.jsonl", "evalPath": "preferences_eval.jsonl"},
                "training": training("dpo", learningRate=1.0e-3)},
        "rlhf": {"name": "rlhf", "type": "rlhf", "from": base, "rewardModel": "reward",
                 "data": {"path": "prompts.jsonl", "evalPath": "prompts_eval.jsonl"},
                 "rl": {"algorithm": "rloo", "numGenerations": 2, "maxCompletionLength": 4, "evalPrompts": 16},
                 "training": training("rlhf", learningRate=1.0e-3, batchSize=8)},
        "eval": {"name": "eval", "type": "eval",
                 "eval": {"models": [s for s in (base, "dpo", "rlhf") if s in stages],
                          "generate": {"path": "answers_eval.jsonl", "maxNewTokens": 4, "limit": 16,
                                       **({"rewardModel": "reward", "baseline": base} if "reward" in stages else {})}}},
    }
    chosen = [all_stages[s] for s in stages if s != "chat" or has_chat]
    return {"apiVersion": "refinery.dev/v1alpha1", "kind": "TrainingPipeline", "metadata": {"name": name},
            "spec": {"storage": {"claimName": "unused"}, "stages": chosen}}


def run_pipeline(manifest: dict, workdir: Path, data_root: Path, cache: Path, timeout: float = 1800):
    """`refinery run` (local mode) with the hub cache offline; (returncode, status.json or None, output)."""
    import json
    import os
    import subprocess
    import sys

    import yaml

    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{manifest['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    env = {k: v for k, v in os.environ.items() if k != "REFINERY_METRICS_PORT"} | {
        "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "refinery_operator.cli", "run", str(path), "--workdir", str(workdir),
                          "--data-root", str(data_root), "--quiet", "--metrics-port", "0"],
                         env=env, capture_output=True, text=True, timeout=timeout)
    status_file = workdir / manifest["metadata"]["name"] / "status.json"
    status = json.loads(status_file.read_text()) if status_file.exists() else None
    return run.returncode, status, run.stdout + run.stderr
