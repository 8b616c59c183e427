"""Generate the tiny datasets of the verifiable-answer example (`examples/tiny-math.yaml`).

    python scripts/make_math_data.py            # writes examples/data/math_*
    python scripts/make_math_data.py --out DIR

The task: *add two small numbers.* A prompt asks for a sum of two digits ("What is 7 plus 5?")
and the one right completion is the number (" 12"). The answer is checked by a verifier (exact
match against the `reference` column), so RL needs no reward model: pretrain -> sft -> rlhf with
verifier rewards (RLVR).

It is built so that RL with the exact answer has something to fix:

- `math_pretrain.txt`: short worksheets of sums, all of them right (so the tokenizer has a token
  per number and the model has seen every sum).
- `math_sft.jsonl`: demonstrations written by a hasty annotator who *drops the carry*
  (`CARRY_DROP_RATE` of the time, 7 + 5 -> " 2") on sums of 10 or more, and slips by one
  (`SLIP_RATE`) on any sum. Supervised fine-tuning imitates them: the SFT policy's greedy answer
  to most carrying sums is the carry-less one, while sampling at temperature 1 still writes the
  right one about 1 time in 4 (`CARRY_DROP_RATE` leaves 0.3), often enough for RL to find it.
- `math_prompts.jsonl`: prompts with their reference answer, for RL. `math_prompts_eval.jsonl`
  (the rlhf stage's held-out exact match) and `math_answers_eval.jsonl` (the eval stage) hold
  prompt strings that appear in no training file: the same sums asked in wordings held out for
  them (template x operand pair), as tiny-chat holds out its prompt strings.

Standard library only, fixed seed, byte-for-byte deterministic.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 1234
DIGITS = range(10)
CARRY_DROP_RATE = 0.7  # share of carrying sums the SFT annotator writes without the carry
SLIP_RATE = 0.05  # share of any sum written one too high or one too low

TEMPLATES = [
    "What is {a} plus {b}?",
    "What is {a} + {b}?",
    "How much is {a} plus {b}?",
    "Add {a} and {b}.",
    "What do you get when you add {a} and {b}?",
    "Compute {a} + {b}.",
    "What is the sum of {a} and {b}?",
    "Tell me {a} plus {b}.",
]
THINGS = ["apples", "pens", "books", "cats", "stones", "cups", "birds", "coins"]
NAMES = ["Ann", "Bob", "Tom", "Sue", "Max", "Eva", "Sam", "Lily"]


def reference(a: int, b: int) -> str:
    """The right completion (leading space, as the model writes it)."""
    return f" {a + b}"


def carries(a: int, b: int) -> bool:
    return a + b >= 10


def all_prompts() -> list[tuple[str, int, int]]:
    """Every (prompt, a, b): templates x operand pairs."""
    return [(t.format(a=a, b=b), a, b) for t in TEMPLATES for a in DIGITS for b in DIGITS]


def split_prompts(rng: random.Random, eval_share: float) -> tuple[list, list]:
    """Disjoint prompt strings: training files draw from the first list, eval files from the second."""
    prompts = all_prompts()
    rng.shuffle(prompts)
    n_eval = int(len(prompts) * eval_share)
    return prompts[n_eval:], prompts[:n_eval]


def sft_completion(rng: random.Random, a: int, b: int) -> str:
    total = a + b
    if carries(a, b) and rng.random() < CARRY_DROP_RATE:
        total -= 10  # the carry dropped: 7 + 5 -> 2
    elif rng.random() < SLIP_RATE:
        total = max(0, total + rng.choice([-1, 1]))
    return f" {total}"


def worksheet(rng: random.Random) -> str:
    """One pretraining document: a few right sums, in words a child's worksheet uses."""
    sentences = []
    for _ in range(rng.randint(3, 6)):
        a, b = rng.choice(DIGITS), rng.choice(DIGITS)
        c = a + b
        thing, name = rng.choice(THINGS), rng.choice(NAMES)
        options = [
            f"{a} plus {b} is {c}.",
            f"{a} + {b} = {c}.",
            f"The sum of {a} and {b} is {c}.",
            f"If you add {a} and {b} you get {c}.",
            f"{name} has {a} {thing} and gets {b} more, so {name} has {c} {thing}.",
            f"What is {a} plus {b}? It is {c}.",
        ]
        sentences.append(rng.choice(options))
    return " ".join(sentences)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def generate(out: Path) -> dict[str, int]:
    rng = random.Random(SEED)
    out.mkdir(parents=True, exist_ok=True)
    train_prompts, eval_prompts = split_prompts(rng, eval_share=0.25)

    sheets = [worksheet(rng) for _ in range(1500)]
    (out / "math_pretrain.txt").write_text("\n\n".join(sheets) + "\n")

    def sft_rows(prompts: list, n: int) -> list[dict]:
        picks = [rng.choice(prompts) for _ in range(n)]
        return [{"prompt": p, "completion": sft_completion(rng, a, b)} for p, a, b in picks]

    def with_reference(prompts: list) -> list[dict]:
        return [{"prompt": p, "reference": reference(a, b)} for p, a, b in prompts]

    files = {
        "math_sft.jsonl": sft_rows(train_prompts, 2000),
        "math_sft_eval.jsonl": sft_rows(eval_prompts, 200),
        "math_prompts.jsonl": with_reference([rng.choice(train_prompts) for _ in range(1000)]),
        "math_prompts_eval.jsonl": with_reference(rng.sample(eval_prompts, 128)),
        "math_answers_eval.jsonl": with_reference(rng.sample(eval_prompts, 128)),
    }
    for name, rows in files.items():
        write_jsonl(out / name, rows)
    return {"math_pretrain.txt": len(sheets), **{name: len(rows) for name, rows in files.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "examples" / "data")
    args = parser.parse_args()
    for name, count in generate(args.out).items():
        print(f"{args.out / name}: {count} records")


if __name__ == "__main__":
    main()
