"""The GPU benchmark: MFU of refinery-train against a plain training loop, packing, and an RL step.

    python benchmarks/gpu_suite.py                       # on one H100/H200: every part, ~6 min
    python benchmarks/gpu_suite.py --parts pretrain --steps 100
    python benchmarks/gpu_suite.py --tiny --device cpu   # the same code paths on a tiny model (tests)

From a bare Python with torch (CUDA) preinstalled: `pip install --no-deps .` plus wheels of
transformers, trl, peft, accelerate, datasets, tokenizers (and their pure-Python dependencies:
`pip download 'refinery[trainer]' -d wheels` on a machine with network, then `pip install
--no-index -f wheels .`); neither DeepSpeed nor vLLM is needed. Parts (`--parts`):

- `pretrain`: a ~1.1B Llama from config (hidden 2048, 16 layers, 16 heads of 128, 8 KV heads,
  MLP 8192, a 32k BPE vocabulary trained on generated text) pretrained in bf16 at seqLen 2048
  through refinery-train's pretrain stage: its `tokensPerSecond` and `mfu` (ThroughputCallback:
  non-padding tokens over the time of the optimiser steps; FLOPs per token 6N + 12 L H S, see
  refinery_trainer/throughput.py). The same model, blocks, batch and optimiser (AdamW, fused as
  the Trainer picks it, bf16 autocast over fp32 weights) through a plain loop with no Refinery
  and no Trainer: forward, backward, clip, step. `ratio` = refinery / plain tokens/s.
  Targets: MFU >= 45%, ratio >= 0.97.
- `sft`: a ~0.4B Llama fine-tuned on the example's chat data (examples/data/sft.jsonl as
  user/assistant messages: its length distribution) through refinery-train's sft stage, packed
  (8 rows of 2048 tokens) and padded (`packing: false`, 64 examples a step). Target: packed
  >= 1.5x the padded tokens/s.
- `rl`: a reward stage (examples/data/preferences.jsonl) and an rloo stage
  (examples/data/prompts.jsonl, 8 completions per prompt) on the ~0.4B policy: seconds per
  optimiser step, and of those the share spent in `generate` (timed around transformers'
  `GenerationMixin.generate` inside the steps only).

Runs fail clearly without CUDA unless `--device cpu` (then `--tiny` is implied: fp32, a model of
a few layers, seconds per part). Prints a table; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data"
PARTS = ("pretrain", "sft", "rl")

# Model shapes (ModelConfig fields) and batch settings, full size and --tiny.
SIZES = {
    "full": {
        "pretrain_model": {"hiddenSize": 2048, "numHiddenLayers": 16, "numAttentionHeads": 16, "numKeyValueHeads": 8,
                           "intermediateSize": 8192, "maxPositionEmbeddings": 2048},
        "policy_model": {"hiddenSize": 1024, "numHiddenLayers": 20, "numAttentionHeads": 8, "intermediateSize": 4096,
                         "maxPositionEmbeddings": 2048},
        "vocab": 32000, "seq_len": 2048, "pretrain_batch": 8, "packed_rows": 8, "padded_batch": 64,
        "reward_batch": 64, "rl_batch": 64, "generations": 8, "completion": 64, "corpus_words": 1_800_000,
    },
    "tiny": {
        "pretrain_model": {"hiddenSize": 64, "numHiddenLayers": 2, "numAttentionHeads": 4, "intermediateSize": 128,
                           "maxPositionEmbeddings": 128},
        "policy_model": {"hiddenSize": 64, "numHiddenLayers": 2, "numAttentionHeads": 4, "intermediateSize": 128,
                         "maxPositionEmbeddings": 128},
        "vocab": 512, "seq_len": 128, "pretrain_batch": 4, "packed_rows": 2, "padded_batch": 8,
        "reward_batch": 8, "rl_batch": 8, "generations": 4, "completion": 8, "corpus_words": 20_000,
    },
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="See the module docstring for what each part measures.")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure (default: all)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per run (default: 60 pretrain/sft, 10 rl)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a smoke run of the code paths")
    parser.add_argument("--tiny", action="store_true", help="tiny models (implied by --device cpu)")
    parser.add_argument("--workdir", type=Path, default=None, help="where models and runs go (default: a temporary folder)")
    return parser.parse_args(argv)


# ---- generated data ---------------------------------------------------------------------------


def write_corpus(path: Path, words: int, seed: int = 0) -> Path:
    """Documents of Zipf-distributed made-up words: enough distinct text for a 32k BPE vocabulary."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "ba", "do", "fu", "gi", "ha", "jo", "pe"]
    lexicon = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(50_000)]
    cumulative = list(itertools.accumulate(1 / (i + 1) for i in range(len(lexicon))))  # Zipf, summed once
    docs, left = [], words
    while left > 0:
        n = min(left, rng.randint(200, 2000))
        docs.append(" ".join(rng.choices(lexicon, cum_weights=cumulative, k=n)) + ".")
        left -= n
    path.write_text("\n\n".join(docs) + "\n")
    return path


def write_chat_data(folder: Path) -> dict:
    """examples/data/sft*.jsonl as user/assistant chats: the example's own length distribution."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in ("sft.jsonl", "sft_eval.jsonl"):
        rows = [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]
        chats = [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]}
                 for r in rows]
        (folder / name).write_text("".join(json.dumps(c) + "\n" for c in chats))
        paths[name] = str(folder / name)
    return {"path": paths["sft.jsonl"], "evalPath": paths["sft_eval.jsonl"]}


# ---- refinery-train in this process -------------------------------------------------------------


def free_memory() -> None:
    """Drop what the previous run left on the GPU (its trainer is garbage by now)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_stage(work: Path, name: str, type_: str, spec: dict, **resolved) -> dict:
    """One StageRun through refinery-train's `run_stage`; its result.json metrics."""
    from refinery.api.run import StageRun
    from refinery_trainer import cli

    free_memory()
    stage_dir = work / name
    run = StageRun.model_validate({
        "pipeline": "gpu-suite", "stageDir": str(stage_dir), "dataRoot": str(DATA),
        "reporter": {"kind": "file", "path": str(stage_dir / "progress.json")},
        "stage": {"name": name, "type": type_, **spec}, **resolved,
    })
    assert cli.run_stage(run) == 0, f"{name} failed: see {stage_dir / 'progress.json'}"
    return json.loads((stage_dir / "result.json").read_text())["metrics"]


def training(size: dict, steps: int, precision: str, **extra) -> dict:
    return {"maxSteps": steps, "saveSteps": steps, "loggingSteps": max(1, steps // 5), "learningRate": 3e-4,
            "seqLen": size["seq_len"], "precision": precision, "seed": 0, **extra}


# ---- (a) pretrain: refinery-train vs a plain loop -------------------------------------------------


def plain_loop(model_dir: Path, corpus: Path, size: dict, steps: int, device: str, bf16: bool) -> float:
    """Tokens/s of a hand-written loop (no Refinery, no Trainer) on the same model, blocks and batch."""
    import torch
    from transformers import AutoModelForCausalLM

    from refinery_trainer.stages.pretrain import pack, tokenize_documents
    from refinery_trainer.tokenizer import load_tokenizer

    free_memory()
    tokenizer = load_tokenizer(model_dir)
    texts = [t for t in corpus.read_text().split("\n\n") if t.strip()]
    blocks = pack(tokenize_documents(tokenizer, texts), size["seq_len"])
    batch = size["pretrain_batch"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device == "cuda")
    ids = torch.tensor([b["input_ids"] for b in blocks[: batch * steps]], device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for step in range(steps):
        x = ids[(step * batch) % len(ids):][:batch]
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync()
    return steps * batch * size["seq_len"] / (time.perf_counter() - start)


def part_pretrain(work: Path, size: dict, steps: int, device: str, precision: str) -> dict:
    corpus = write_corpus(work / "corpus.txt", size["corpus_words"])
    spec = {"model": {"config": size["pretrain_model"], "vocabSize": size["vocab"]},
            "data": {"path": str(corpus), "evalFraction": 0.05},
            "training": training(size, steps, precision, batchSize=size["pretrain_batch"])}
    metrics = run_stage(work, "pretrain", "pretrain", spec)
    plain = plain_loop(work / "pretrain" / "model", corpus, size, steps, device, bf16=precision == "bf16")
    return {"refinery_tokens_per_second": metrics["tokensPerSecond"], "mfu": metrics.get("mfu"),
            "plain_tokens_per_second": plain, "ratio": metrics["tokensPerSecond"] / plain}


# ---- (b) sft packed vs padded, (c) reward + rloo ---------------------------------------------------


def base_policy(work: Path, size: dict, corpus_words: int) -> Path:
    """A fresh ~0.4B Llama (tiny with --tiny) and a BPE tokenizer, saved like a stage's model/."""
    from refinery.api.v1alpha1 import ModelConfig
    from refinery_trainer.modeling import build_model
    from refinery_trainer.tokenizer import train_bpe_tokenizer

    folder = work / "policy"
    if not (folder / "config.json").is_file():
        corpus = write_corpus(work / "policy-corpus.txt", corpus_words, seed=1)
        texts = [t for t in corpus.read_text().split("\n\n") if t.strip()]
        texts += [line for line in (DATA / "sft.jsonl").read_text().splitlines()]  # the chat vocabulary too
        tokenizer = train_bpe_tokenizer(texts, vocab_size=size["vocab"])
        build_model(ModelConfig.model_validate(size["policy_model"]), tokenizer).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


def part_sft(work: Path, size: dict, steps: int, precision: str) -> dict:
    base = base_policy(work, size, size["corpus_words"] // 4)
    data = write_chat_data(work / "chat")
    out = {}
    for packing, batch in ((True, size["packed_rows"]), (False, size["padded_batch"])):
        name = "sft-packed" if packing else "sft-padded"
        spec = {"from": "policy", "data": data, "training": training(size, steps, precision, batchSize=batch, packing=packing)}
        out[name] = run_stage(work, name, "sft", spec, initModel=str(base))["tokensPerSecond"]
    return {"packed_tokens_per_second": out["sft-packed"], "padded_tokens_per_second": out["sft-padded"],
            "ratio": out["sft-packed"] / out["sft-padded"]}


class GenerationClock:
    """Seconds inside `GenerationMixin.generate` while an optimiser step runs, and the steps' own seconds."""

    def __init__(self, device: str):
        from transformers import GenerationMixin, TrainerCallback

        self.device, self.in_step, self.generation_s, self.step_s, self.steps = device, False, 0.0, 0.0, 0
        original = GenerationMixin.generate
        clock = self

        def timed_generate(model, *args, **kwargs):
            if not clock.in_step:
                return original(model, *args, **kwargs)
            clock.sync()
            start = time.perf_counter()
            try:
                return original(model, *args, **kwargs)
            finally:
                clock.sync()
                clock.generation_s += time.perf_counter() - start

        self.original, GenerationMixin.generate = original, timed_generate

        class Steps(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                clock.in_step, clock.started = True, time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                clock.sync()
                clock.in_step, clock.steps = False, clock.steps + 1
                clock.step_s += time.perf_counter() - clock.started

        self.callback = Steps()

    def sync(self):
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def close(self):
        from transformers import GenerationMixin

        GenerationMixin.generate = self.original


def part_rl(work: Path, size: dict, steps: int, device: str, precision: str) -> dict:
    from refinery_trainer.context import StageContext

    base = base_policy(work, size, size["corpus_words"] // 4)
    data = {"path": str(DATA / "preferences.jsonl"), "evalPath": str(DATA / "preferences_eval.jsonl")}
    reward = run_stage(work, "reward", "reward", {"from": "policy", "data": data,
                                                   "training": training(size, steps, precision, batchSize=size["reward_batch"])},
                       initModel=str(base))
    clock = GenerationClock(device)
    callbacks = StageContext.callbacks
    StageContext.callbacks = lambda self: [*callbacks(self), clock.callback]  # time the steps, change nothing else
    try:
        spec = {"from": "policy", "rewardModel": "reward",
                "data": {"path": str(DATA / "prompts.jsonl"), "evalPath": str(DATA / "prompts_eval.jsonl")},
                "rl": {"algorithm": "rloo", "numGenerations": size["generations"], "maxCompletionLength": size["completion"],
                       "evalPrompts": 16},
                "training": training(size, steps, precision, batchSize=size["rl_batch"])}
        rloo = run_stage(work, "rloo", "rlhf", spec, initModel=str(base), rewardModel=str(work / "reward" / "model"))
    finally:
        StageContext.callbacks = callbacks
        clock.close()
    step_s = clock.step_s / max(1, clock.steps)
    return {"reward_tokens_per_second": reward["tokensPerSecond"], "reward_mfu": reward.get("mfu"),
            "rloo_step_s": step_s, "rloo_generation_share": clock.generation_s / clock.step_s if clock.step_s else None,
            "rloo_tokens_per_second": rloo["tokensPerSecond"]}


# ---- the table and the JSON line ----------------------------------------------------------------

TARGETS = {("pretrain", "mfu"): 0.45, ("pretrain", "ratio"): 0.97, ("sft", "ratio"): 1.5}


def table(results: dict) -> str:
    lines = [f"{'part':<10}{'figure':<30}{'value':>14}{'target':>10}"]
    for part, figures in results.items():
        for key, value in figures.items():
            target = TARGETS.get((part, key))
            shown = "-" if value is None else f"{value:.1%}" if key.endswith(("mfu", "share")) else f"{value:,.3f}" \
                if key.endswith("_s") or key == "ratio" else f"{value:,.0f}"
            lines.append(f"{part:<10}{key:<30}{shown:>14}{'' if target is None else f'>= {target:g}':>10}")
    return "\n".join(lines)


def device_description(device: str) -> str:
    import torch

    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_suite: needs a CUDA GPU and found none (torch.cuda.is_available() is False); "
              "`--device cpu` runs the same code paths on a tiny model", file=sys.stderr)
        return 2
    tiny = args.tiny or args.device == "cpu"
    size = SIZES["tiny" if tiny else "full"]
    precision = "bf16" if args.device == "cuda" else "fp32"
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="refinery-gpu-suite-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        if "pretrain" in args.parts:
            results["pretrain"] = part_pretrain(work, size, args.steps or 60, args.device, precision)
        if "sft" in args.parts:
            results["sft"] = part_sft(work, size, args.steps or 60, precision)
        if "rl" in args.parts:
            results["rl"] = part_rl(work, size, args.steps or 10, args.device, precision)
        seconds = time.perf_counter() - started
    print(f"device: {device_description(args.device)}; {'tiny' if tiny else 'full-size'} models; {precision}; {seconds:.0f} s")
    print(table(results))
    print(json.dumps({"device": device_description(args.device), "tiny": tiny, "precision": precision,
                      "seconds": seconds, **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
