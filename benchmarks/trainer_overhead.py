"""What Refinery costs on top of transformers/TRL: training tokens/s of each stage, side by side.

    OMP_NUM_THREADS=1 python benchmarks/trainer_overhead.py                 # every stage, 3 repeats
    python benchmarks/trainer_overhead.py --stages sft dpo --repeats 5 --steps 60
    python benchmarks/trainer_overhead.py --stages rlhf --steps 10

For each stage type, the same model, data and settings are trained two ways in this process:

- `refinery`: a StageRun through `refinery_trainer.cli.run_stage` — the stage's `run(ctx)` with
  our callbacks (checkpoint markers with fsync, rotation, progress reports to a file, NaN checks,
  Prometheus metrics), resume checks, evaluation before/after and result.json;
- `direct`: the transformers `Trainer` (pretrain) or TRL trainer (sft `SFTTrainer`, reward
  `RewardTrainer`, dpo `DPOTrainer`, rlhf `RLOOTrainer`) built by hand from the same model folder,
  the same rows and the same arguments (steps, batch, learning rate, seed, checkpoint interval,
  fp32 on CPU; for rlhf the same sampling settings and the same reward model: the base with a
  fresh, seeded score head).

For rlhf, TRL counts the prompt and completion tokens of every sampled batch itself (generation
is part of each step), on both sides alike.

Measured: non-padding input tokens trained (`include_num_input_tokens_seen="non_padding"`, on
both sides) over the wall time from `on_train_begin` to `on_train_end` of `trainer.train()`, the
same window on both sides: the optimiser steps with every step's callback work (ours: progress
reports, Prometheus updates, NaN checks) and the checkpoint save (ours: plus fsync, marker,
rotation). On the refinery side the clock starts before the first of our callbacks' hooks and
stops after the last, so all their work inside `train()` is on it. Outside the window on both
sides, as one-off work that is not training throughput: model loading, dataset tokenization,
the Trainer's own set-up inside `train()` before `on_train_begin` (dataloader, optimizer), and on
the refinery side the evaluation before and after training (`initialEval*`, `eval*`) and dpo's
held-out log-probs of the initial and the trained policy (`pair_logps`), which run outside
`trainer.train()`. Runs are interleaved A B B A …, so drift of a shared machine hits both
alike; each side gets one short warm-up run per stage first. `ratio` is the median over the
repeats of refinery / direct tokens/s of neighbouring runs (target >= 0.97); `cpu_ratio` is the
same with CPU seconds of the process instead of wall seconds — insensitive to other processes
on a shared machine, blind to time spent waiting on the disk (fsync). One checkpoint per run, at
the end, on both sides. The last stdout line is one JSON object of the figures.
Data: examples/data (the animal-sounds task); model: a fresh Llama of `--hidden`/`--layers`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: a shared machine, stable timings
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import transformers  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data"
FILES = {"pretrain": ("pretrain.txt", None), "sft": ("sft.jsonl", "sft_eval.jsonl"),
         "reward": ("preferences.jsonl", "preferences_eval.jsonl"), "dpo": ("preferences.jsonl", "preferences_eval.jsonl"),
         "rlhf": ("prompts.jsonl", "prompts_eval.jsonl")}
SEQ_LEN = {"pretrain": 128, "sft": 64, "reward": 64, "dpo": 64, "rlhf": 64}
# rlhf (RLOO): completions sampled per prompt, their length, KL weight; held-out prompts scored before/after.
RL = {"algorithm": "rloo", "numGenerations": 4, "maxCompletionLength": 8, "beta": 0.05, "evalPrompts": 8}


class Timer(TrainerCallback):
    """Wall time, CPU time (every thread of the process) and non-padding tokens of one `trainer.train()`,
    from `on_train_begin` to `on_train_end`. Put last in the callback list, with `Timer.Start` first
    when other callbacks are added: the clock then covers every callback's begin and end hooks."""

    class Start(TrainerCallback):
        def __init__(self, timer: Timer):
            self.timer = timer

        def on_train_begin(self, args, state, control, **kwargs):
            self.timer.on_train_begin(args, state, control, **kwargs)

    started = False

    def on_train_begin(self, args, state, control, **kwargs):
        if self.started:  # already started by `Timer.Start`, before the other callbacks
            return
        self.started = True
        self.start, self.cpu_start, self.tokens0 = time.perf_counter(), time.process_time(), state.num_input_tokens_seen

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds, self.cpu_seconds = time.perf_counter() - self.start, time.process_time() - self.cpu_start
        self.tokens = state.num_input_tokens_seen - self.tokens0


# ---- the shared setup -----------------------------------------------------------------------------


def make_base_model(folder: Path, hidden: int, layers: int) -> Path:
    """A fresh Llama and a BPE tokenizer trained on the example corpus, saved like a stage's model/."""
    from refinery.api.v1alpha1 import ModelConfig
    from refinery_trainer.modeling import build_model
    from refinery_trainer.tokenizer import train_bpe_tokenizer

    texts = [t for t in (DATA / "pretrain.txt").read_text().split("\n\n") if t.strip()]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=1024)
    config = ModelConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(1, hidden // 32),
                         intermediate_size=hidden * 4, max_position_embeddings=256)
    build_model(config, tokenizer, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_reward_model(base: Path) -> Path:
    """The rlhf reward model: the base with a one-output score head (seeded), saved beside it."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = base.parent / "reward"
    if not folder.is_dir():
        torch.manual_seed(0)
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


def training_spec(stage: str, steps: int, batch: int) -> dict:
    return {"maxSteps": steps, "batchSize": batch, "seqLen": SEQ_LEN[stage], "learningRate": 1e-3,
            "saveSteps": steps, "loggingSteps": 5, "seed": 0}


def direct_args(stage: str, out: Path, steps: int, batch: int) -> dict:
    """The TrainingArguments a user would write for the same run (what `training_spec` means)."""
    return dict(
        output_dir=str(out), max_steps=steps, learning_rate=1e-3, per_device_train_batch_size=batch,
        per_device_eval_batch_size=batch, save_strategy="steps", save_steps=steps, logging_steps=5,
        seed=0, data_seed=0, report_to="none", use_cpu=True, bf16=False, fp16=False,
        activation_checkpointing=False, disable_tqdm=True, dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
    )


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


# ---- one run each way -----------------------------------------------------------------------------


def held_out(name: str, folder: Path, n: int = 64) -> Path:
    """The first `n` held-out rows: refinery evaluates before and after training, outside the clock,
    and the benchmark need not wait for all of them."""
    path = folder / name
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in (DATA / name).read_text().splitlines()[:n]))
    return path


def run_refinery(stage: str, base: Path, work: Path, steps: int, batch: int) -> Timer:
    from refinery.api.run import StageRun
    from refinery_trainer import cli
    from refinery_trainer.context import StageContext

    path, eval_path = FILES[stage]
    data = {"path": str(DATA / path), "evalFraction": 0.02}
    if eval_path:
        data["evalPath"] = str(held_out(eval_path, base.parent / "eval"))
    spec = {"name": stage, "type": stage, "data": data, "training": training_spec(stage, steps, batch)}
    if stage == "pretrain":
        spec["model"] = {"path": str(base)}
    else:
        spec["from"] = "base"
    extra = {}
    if stage == "rlhf":
        spec.update(rewardModel="rm", rl=RL)
        extra["rewardModel"] = str(make_reward_model(base))
    run = StageRun.model_validate({
        "pipeline": "bench", "stage": spec, "stageDir": str(work / stage), "dataRoot": str(DATA),
        "initModel": str(base), "reporter": {"kind": "file", "path": str(work / stage / "progress.json")}, **extra,
    })
    timer = Timer()
    callbacks = StageContext.callbacks
    StageContext.callbacks = lambda self: [Timer.Start(timer), *callbacks(self), timer]  # measure, change nothing else
    try:
        assert cli.run_stage(run) == 0, f"refinery {stage} failed"
    finally:
        StageContext.callbacks = callbacks
    return timer


def run_direct(stage: str, base: Path, work: Path, steps: int, batch: int) -> Timer:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    args = direct_args(stage, work / stage, steps, batch)
    timer = Timer()
    if stage == "pretrain":
        from transformers import Trainer, TrainingArguments, default_data_collator

        from refinery_trainer.stages.pretrain import pack, tokenize_documents  # the same blocks of tokens

        texts = [t.strip() for t in (DATA / "pretrain.txt").read_text().split("\n\n") if t.strip()]
        blocks = pack(tokenize_documents(tokenizer, texts), SEQ_LEN[stage])
        trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(base), args=TrainingArguments(**args),
                          train_dataset=blocks, data_collator=default_data_collator, processing_class=tokenizer,
                          callbacks=[timer])
    elif stage == "sft":
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(base),
                             args=SFTConfig(**args, max_length=SEQ_LEN[stage], dataset_num_proc=None),
                             train_dataset=Dataset.from_list(rows("sft.jsonl")), processing_class=tokenizer,
                             callbacks=[timer])
    elif stage == "reward":
        from trl import RewardConfig, RewardTrainer

        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id

        def ids(prompt, response):  # how RL trainers show a text to a reward model (see scoring.py)
            return tokenizer(prompt + response, add_special_tokens=False)["input_ids"]

        pairs = [{"chosen_ids": ids(r["prompt"], r["chosen"]), "rejected_ids": ids(r["prompt"], r["rejected"])}
                 for r in rows("preferences.jsonl")]
        trainer = RewardTrainer(model=model, args=RewardConfig(**args, max_length=SEQ_LEN[stage], disable_dropout=True,
                                                                 dataset_num_proc=None),
                                train_dataset=Dataset.from_list(pairs), processing_class=tokenizer, callbacks=[timer])
    elif stage == "rlhf":
        from trl import RLOOConfig, RLOOTrainer

        from refinery.api.v1alpha1 import RlSpec

        rl = RlSpec.model_validate(RL)
        tokenizer.padding_side = "left"  # generation continues the prompt
        reward_dir = make_reward_model(base)
        reward_model = AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1).eval()
        reward_model.requires_grad_(False)
        trainer = RLOOTrainer(model=AutoModelForCausalLM.from_pretrained(base), reward_funcs=reward_model,
                              args=RLOOConfig(**args, num_generations=rl.num_generations,
                                              max_completion_length=rl.max_completion_length,
                                              temperature=rl.temperature, beta=rl.beta, disable_dropout=True),
                              train_dataset=Dataset.from_list([{"prompt": r["prompt"]} for r in rows("prompts.jsonl")]),
                              processing_class=tokenizer, reward_processing_classes=AutoTokenizer.from_pretrained(reward_dir),
                              callbacks=[timer])
    else:
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(base),
                             ref_model=AutoModelForCausalLM.from_pretrained(base),
                             args=DPOConfig(**args, beta=0.1, loss_type=["sigmoid"], max_length=SEQ_LEN[stage],
                                            disable_dropout=True, dataset_num_proc=None),
                             train_dataset=Dataset.from_list(rows("preferences.jsonl")), processing_class=tokenizer,
                             callbacks=[timer])
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # keep stdout for the table
    trainer.train()
    return timer


# ---- the comparison -------------------------------------------------------------------------------


def measure(stage: str, base: Path, root: Path, steps: int, batch: int, repeats: int) -> dict:
    runners = {"refinery": run_refinery, "direct": run_direct}
    counter = iter(range(10**6))

    def once(side: str, n_steps: int) -> Timer:
        work = root / f"{stage}-{side}-{next(counter)}"
        try:
            return runners[side](stage, base, work, n_steps, batch)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    once("direct", 5), once("refinery", 5)  # warm-up: first-call costs (imports, allocator) on neither side's clock
    runs: dict[str, list[Timer]] = {"refinery": [], "direct": []}
    for i in range(repeats):  # A B, B A, A B …: a drifting machine load hits both sides alike
        for side in (("refinery", "direct") if i % 2 == 0 else ("direct", "refinery")):
            t = once(side, steps)
            runs[side].append(t)
            print(f"  {stage:8} {side:8} run {i + 1}: {t.tokens / t.seconds:8.0f} tokens/s  "
                  f"({t.tokens} tokens, {t.seconds:.2f} s wall, {t.cpu_seconds:.2f} s CPU)", file=sys.stderr, flush=True)
    wall = {side: [t.tokens / t.seconds for t in ts] for side, ts in runs.items()}
    cpu = {side: [t.tokens / t.cpu_seconds for t in ts] for side, ts in runs.items()}
    pairs = [r / d for r, d in zip(wall["refinery"], wall["direct"])]  # neighbours in time: least machine drift
    return {
        "ratio": round(statistics.median(pairs), 4),
        "refinery_tokens_per_s": round(statistics.median(wall["refinery"]), 1),
        "direct_tokens_per_s": round(statistics.median(wall["direct"]), 1),
        "ratio_of_medians": round(statistics.median(wall["refinery"]) / statistics.median(wall["direct"]), 4),
        "cpu_ratio": round(statistics.median(cpu["refinery"]) / statistics.median(cpu["direct"]), 4),
        "pair_ratios": [round(x, 4) for x in pairs],
        "tokens_per_run": runs["direct"][0].tokens, "steps": steps, "batch_size": batch,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", nargs="+", default=list(FILES), choices=list(FILES))
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per side and stage (default 3)")
    parser.add_argument("--steps", type=int, default=30, help="optimiser steps per run; one checkpoint at the end (default 30)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=128, help="model width (default 128)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--workdir", help="default: a temporary folder, removed at the end")
    args = parser.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.WARNING)
    transformers.logging.set_verbosity_error()
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="refinery-bench-"))
    try:
        base = make_base_model(root / "base", args.hidden, args.layers)
        results = {stage: measure(stage, base, root, args.steps, args.batch_size, args.repeats) for stage in args.stages}
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    print(f"trainer overhead: tokens/s through refinery-train vs the trainer called directly "
          f"(median of {args.repeats}, {args.steps} steps x batch {args.batch_size}, "
          f"Llama {args.hidden}x{args.layers}, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})")
    print(f"{'stage':10}{'refinery tok/s':>16}{'direct tok/s':>14}{'ratio':>8}{'CPU-time ratio':>16}  per-pair ratios")
    for stage, r in results.items():
        print(f"{stage:10}{r['refinery_tokens_per_s']:16.0f}{r['direct_tokens_per_s']:14.0f}{r['ratio']:8.3f}"
              f"{r['cpu_ratio']:16.3f}  {' '.join(f'{x:.3f}' for x in r['pair_ratios'])}")
    print(json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
