"""Packed vs unpacked sft on a CPU: real (non-padding) tokens trained per second, side by side.

    OMP_NUM_THREADS=1 python benchmarks/packing.py                  # 3 repeats of 30 steps each way
    python benchmarks/packing.py --repeats 5 --steps 60 --batch 16 --hidden 128

The sft stage of the example (examples/data/sft.jsonl, seqLen 64) runs through refinery-train's
`run_stage` in this process, from the same fresh base model, with `training.packing` true (the
default: best-fit rows of 64 tokens, each example its own positions and attention) and false
(each row one example, padded to the longest in its batch). `batchSize` rows per step on both
sides. Measured: the stage's own `tokensPerSecond` (ThroughputCallback: non-padding tokens over
the time of the training steps). Runs are interleaved packed, unpacked, unpacked, packed …, so a
shared machine's drift hits both alike; `ratio` is the median of packed / unpacked over the
repeats. The padding share of the unpacked batches is counted from the same collated batches.
The last stdout line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: a shared machine, stable timings
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainer_overhead import held_out, make_base_model  # noqa: E402  (the same base model and held-out slice)


def run_sft(base: Path, work: Path, packing: bool, steps: int, batch: int) -> dict:
    from refinery.api.run import StageRun
    from refinery_trainer import cli

    stage_dir = work / f"sft-{'packed' if packing else 'unpacked'}"
    run = StageRun.model_validate({
        "pipeline": "bench", "stageDir": str(stage_dir), "dataRoot": str(DATA), "initModel": str(base),
        "reporter": {"kind": "file", "path": str(stage_dir / "progress.json")},
        "stage": {"name": "sft", "type": "sft", "from": "base",
                  "data": {"path": str(DATA / "sft.jsonl"), "evalPath": str(held_out("sft_eval.jsonl", base.parent / "eval"))},
                  "training": {"maxSteps": steps, "batchSize": batch, "seqLen": 64, "learningRate": 1e-3,
                               "saveSteps": steps, "loggingSteps": 10, "seed": 0, "packing": packing}},
    })
    assert cli.run_stage(run) == 0, "sft failed"
    return json.loads((stage_dir / "result.json").read_text())["metrics"]


def padding_share(base: Path, batch: int, batches: int = 20) -> float:
    """Share of the unpacked batches' positions that are padding (the compute packing saves)."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    rows = [json.loads(line) for line in (DATA / "sft.jsonl").read_text().splitlines()[: batch * batches]]
    ids = [tokenizer(r["prompt"] + r["completion"])["input_ids"][:64] for r in rows]
    collate = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)
    real = total = 0
    for i in range(0, len(ids), batch):
        out = collate([{"input_ids": x} for x in ids[i : i + batch]])
        real, total = real + int(out["attention_mask"].sum()), total + out["attention_mask"].numel()
    return 1 - real / total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="refinery-packing-") as tmp:
        base = make_base_model(Path(tmp) / "base", args.hidden, args.layers)
        figures: dict[bool, list[float]] = {True: [], False: []}
        for i in range(args.repeats):
            for packing in ((True, False) if i % 2 == 0 else (False, True)):
                work = Path(tmp) / f"run-{i}"
                figures[packing].append(run_sft(base, work, packing, args.steps, args.batch)["tokensPerSecond"])
        padding = padding_share(base, args.batch)
    ratios = [p / u for p, u in zip(figures[True], figures[False])]
    result = {
        "packed_tokens_per_second": statistics.median(figures[True]),
        "unpacked_tokens_per_second": statistics.median(figures[False]),
        "ratio": statistics.median(ratios),
        "unpacked_padding_share": padding,
        "repeats": args.repeats, "steps": args.steps, "batch": args.batch, "hidden": args.hidden, "layers": args.layers,
        "omp_threads": int(os.environ["OMP_NUM_THREADS"]),
    }
    print(f"{'sft rows':<10} {'tokens/s (median)':>18}  runs")
    for packing in (True, False):
        runs = " ".join(f"{v:.0f}" for v in figures[packing])
        print(f"{'packed' if packing else 'unpacked':<10} {statistics.median(figures[packing]):>18.0f}  {runs}")
    print(f"packed / unpacked: {result['ratio']:.2f}x; unpacked batches are {padding:.0%} padding")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
