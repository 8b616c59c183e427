"""The model-family matrix: every stage on a tiny random model of each family, with and without LoRA.

    OMP_NUM_THREADS=1 python benchmarks/family_matrix.py                       # 6 families x {full, lora}
    python benchmarks/family_matrix.py --families gpt2 phi3 --modes lora --workdir /tmp/fm

Each family (tests/families.py: Llama 3, Qwen 2, Gemma 2, Phi-3, Mistral, GPT-2 — the architecture's
transformers config, a tokenizer and chat template shaped like the family's, no `{% generation %}`
markers) is published to an offline hub cache and a pipeline runs in local mode from
`hf://acme/tiny-<family>@<commit>`: sft on prompt/completion data, sft on `messages` data (GPT-2
has no chat template: its `messages` cell is preflight's `Misconfigured` instead), reward, dpo and
rlhf (rloo) from the chat sft, eval of sft, dpo and rlhf. With LoRA every training stage adapts
peft's "all-linear" default; the table names what that is per architecture.

Figures: sft's held-out loss before → after (prompt/completion and messages), the reward model's
held-out pairwise accuracy before → after, dpo's held-out margin before → after and accuracy, rlhf's held-out mean reward before → after
(a few steps on a tiny model: its sign is noise; the cell says the stage ran), eval's scored
models, and seconds per pipeline. Then the loss-mask check per family: the tokens in the loss of
a two-turn conversation, decoded (tests/trainer/test_lossmask.py asserts them token by token).
The last stdout line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("REFINERY_TERMINATION_LOG", os.devnull)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the family builders live with the tests

from tests.families import FAMILIES, build_family, family_pipeline, publish, run_pipeline, write_family_data  # noqa: E402

CONVERSATION = [{"role": "user", "content": "What does the cow say?"}, {"role": "assistant", "content": "moo"},
                {"role": "user", "content": "And the duck?"}, {"role": "assistant", "content": "quack"}]


def lora_targets(folder: Path) -> list[str]:
    """The module names peft's "all-linear" adapts in this architecture (what training.lora trains)."""
    from peft import get_peft_model

    from refinery_trainer.lora import lora_config
    from refinery_trainer.modeling import load_model
    from refinery.api.training import LoraSpec

    model = get_peft_model(load_model(folder), lora_config(LoraSpec()))
    return sorted({name.split(".")[-2] for name, _ in model.named_modules() if name.endswith(".lora_A")})


def mask_check(folder: Path) -> str:
    from refinery_trainer.lossmask import tokenize_chat
    from refinery_trainer.tokenizer import load_tokenizer

    tok = load_tokenizer(folder)
    if not tok.chat_template:
        return "no chat template"
    row = tokenize_chat(tok, CONVERSATION, "assistant")
    runs, current = [], []
    for token, bit in zip(row["input_ids"], row["assistant_masks"]):
        if bit:
            current.append(token)
        elif current:
            runs, current = runs + [current], []
    runs += [current] if current else []
    return " | ".join(repr(tok.decode(r)) for r in runs) + f"  ({sum(row['assistant_masks'])} of {len(row['input_ids'])} tokens)"


def cell(metrics: dict, before: str, after: str) -> str:
    if after not in metrics:
        return "-"
    return f"{metrics.get(before, float('nan')):.2f}→{metrics[after]:.2f}"


def summarize(status: dict | None, output: str) -> dict:
    if status is None:
        return {"error": output[-500:]}
    stages = {s["name"]: s for s in status["stages"]}
    row = {"phase": status["phase"]}
    for name, stage in stages.items():
        m = stage.get("metrics") or {}
        if stage["phase"] != "Succeeded":
            row[name] = f"{stage['phase']}: {(stage.get('lastFailure') or {}).get('reason', '')}"
        elif name in ("sft", "chat"):
            row[name] = cell(m, "initialEvalLoss", "evalLoss")
            row[f"{name}Falls"] = m["evalLoss"] < m["initialEvalLoss"]
        elif name == "reward":
            row[name] = cell(m, "initialEvalAccuracy", "evalAccuracy")
        elif name == "dpo":  # no accuracy before training: every margin is 0 at the reference policy
            row[name] = f"margin {cell(m, 'initialEvalMargin', 'evalMargin')}, acc {m.get('evalAccuracy', float('nan')):.2f}"
        elif name == "rlhf":
            row[name] = cell(m, "baselineMeanReward", "meanReward")
        elif name == "eval":
            row[name] = f"{len({k.split('.')[0] for k in m})} models"
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--modes", nargs="+", default=["full", "lora"], choices=["full", "lora"])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="family-matrix-"))
    cache, data = root / "hub", write_family_data(root / "data")
    figures = {}
    for family in args.families:
        folder = build_family(family, root / "models" / family)
        commit = publish(cache, family, folder)
        figures[family] = {"modelType": json.loads((folder / "config.json").read_text())["model_type"],
                           "loraTargets": lora_targets(folder), "mask": mask_check(folder)}
        for mode in args.modes:
            started = time.monotonic()
            code, status, output = run_pipeline(family_pipeline(f"{family}-{mode}", family, commit, mode == "lora"),
                                                root / "work", data, cache)
            figures[family][mode] = summarize(status, output) | {"seconds": round(time.monotonic() - started, 1)}
            print(f"{family} {mode}: {figures[family][mode]}", file=sys.stderr, flush=True)
        if FAMILIES[family].template is None:  # messages data on a tokenizer without a chat template
            figures[family]["chatPreflight"] = preflight_of_chat(family, commit, root, data, cache)
    print_table(figures, args.modes)
    print(json.dumps(figures))
    return 0 if all(figures[f][m].get("phase") == "Succeeded" for f in figures for m in args.modes) else 1


def preflight_of_chat(family: str, commit: str, root: Path, data: Path, cache: Path) -> str:
    """A `messages` sft stage on the family's model: what preflight says (and that no stage started)."""
    manifest = family_pipeline(f"{family}-messages", family, commit, False, stages=("sft",))
    manifest["spec"]["stages"][0]["data"] = {"path": "chat.jsonl", "evalPath": "chat_eval.jsonl"}
    _, status, output = run_pipeline(manifest, root / "work", data, cache)
    if status is None:
        return output[-300:]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    started = any((root / "work" / f"{family}-messages").glob("sft/attempt-*"))
    return f"{failed['reason']} (stage started: {started}): {failed['message'][:160]}"


def print_table(figures: dict, modes: list[str]) -> None:
    print("| family | model_type | LoRA targets (all-linear) | mode | sft p/c eval loss | sft messages eval loss | "
          "reward acc | dpo | rlhf reward | eval | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for family, f in figures.items():
        for mode in modes:
            r = f[mode]
            chat = r.get("chat", "n/a: no chat template (preflight Misconfigured)" if "chatPreflight" in f else "-")
            print(f"| {family} | {f['modelType']} | {', '.join(f['loraTargets'])} | {mode} | {r.get('sft', r.get('error', '-'))} "
                  f"| {chat} | {r.get('reward', '-')} | {r.get('dpo', '-')} | {r.get('rlhf', '-')} | {r.get('eval', '-')} "
                  f"| {r['seconds']} |")
    print("\nLoss-mask check (`training.lossOn: assistant`, a two-turn conversation; tokens in the loss, decoded):")
    for family, f in figures.items():
        print(f"- {family}: {f['mask']}")
        if "chatPreflight" in f:
            print(f"  messages data: {f['chatPreflight']}")


if __name__ == "__main__":
    sys.exit(main())
