"""Generate the tiny datasets of the example pipeline (`examples/data/`).

    python scripts/make_example_data.py            # writes examples/data/
    python scripts/make_example_data.py --out DIR

The task: *what does the animal say?* A prompt names an animal ("What does the sleepy cow
say?") and the one right completion is its sound (" moo"). It has a checkable answer
(`is_correct`), single-token answers, and a prompt space large enough (templates x adjectives x
animals) that held-out prompts are strings the model never saw.

It is built to show what each stage of the classic recipe is for:

- `pretrain.txt`: short stories about a farm, where every animal says its own sound. Real
  sentences, so a tiny model's language-modelling loss falls a long way.
- `sft.jsonl`: demonstrations written by a sloppy annotator who mixes up some animals with
  another one (`CONFUSIONS`) more often than not. Supervised fine-tuning imitates them, so the
  SFT policy answers those animals wrongly: room for RLHF to improve.
- `preferences.jsonl`: careful pairwise judgements (the right sound is always `chosen`), so a
  reward model learns what is right even where the demonstrations were wrong.
- `prompts.jsonl`: prompts only, for RLHF. The `*_eval.jsonl` files hold prompts (and pairs)
  whose exact wording appears in none of the training files.
- `answers_eval.jsonl`: held-out prompts with their reference answer, for the eval stage.

Standard library only, fixed seed, byte-for-byte deterministic.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 1234

SOUNDS = {
    "cow": "moo",
    "dog": "woof",
    "cat": "meow",
    "pig": "oink",
    "sheep": "baa",
    "duck": "quack",
    "owl": "hoot",
    "frog": "ribbit",
    "bee": "buzz",
    "hen": "cluck",
}

# The sloppy annotator of the SFT demonstrations answers these animals with the other animal's
# sound `SFT_CONFUSION_RATE` of the time (and every other animal wrongly `SFT_NOISE_RATE` of it).
CONFUSIONS = {"cow": "sheep", "owl": "hen", "frog": "duck", "bee": "cat"}
SFT_CONFUSION_RATE = 0.6
SFT_NOISE_RATE = 0.1

ADJECTIVES = [
    "", "big", "little", "old", "young", "brown", "white", "black", "happy", "sleepy",
    "hungry", "noisy", "tiny", "fat", "grey", "spotted", "tired", "clever", "lazy", "angry",
]
TEMPLATES = [
    "What does the {a} say?",
    "What sound does the {a} make?",
    "What does {an} {a} say?",
    "Tell me what the {a} says.",
    "What noise does the {a} make?",
    "Which sound does {an} {a} make?",
    "Say what the {a} says.",
    "How does the {a} sound?",
]
PLACES = ["in the barn", "in the field", "by the pond", "in the wood", "on the hill", "near the house", "in the yard"]
FOODS = ["grass", "corn", "seeds", "bugs", "fish", "apples", "hay", "bread"]
TIMES = ["In the morning", "At night", "At noon", "After the rain", "Every day", "When the sun is up"]


def answer(animal: str) -> str:
    """The right completion for a prompt about `animal` (leading space, as the model writes it)."""
    return " " + SOUNDS[animal]


def is_correct(prompt: str, completion: str) -> bool:
    """Whether `completion` is the right answer to `prompt` (used by tests; the product never is)."""
    animal = animal_of(prompt)
    return animal is not None and completion.strip().rstrip(".!").strip() == SOUNDS[animal]


def animal_of(prompt: str) -> str | None:
    words = prompt.lower().rstrip("?.!").split()
    return next((w for w in reversed(words) if w in SOUNDS), None)


def all_prompts() -> list[str]:
    """Every prompt string: templates x adjectives x animals."""
    subjects = [f"{adj} {animal}" if adj else animal for adj in ADJECTIVES for animal in SOUNDS]
    return [t.format(a=s, an=article(s)) for t in TEMPLATES for s in subjects]


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def split_prompts(rng: random.Random, eval_share: float) -> tuple[list[str], list[str]]:
    """Disjoint prompt strings: training files draw from the first list, eval files from the second."""
    prompts = all_prompts()
    rng.shuffle(prompts)
    n_eval = int(len(prompts) * eval_share)
    return prompts[n_eval:], prompts[:n_eval]


def sft_completion(rng: random.Random, animal: str) -> str:
    if animal in CONFUSIONS and rng.random() < SFT_CONFUSION_RATE:
        return answer(CONFUSIONS[animal])
    if rng.random() < SFT_NOISE_RATE:
        return answer(rng.choice([a for a in SOUNDS if a != animal]))
    return answer(animal)


def preferences(rng: random.Random, prompts: list[str], rounds: int) -> list[dict]:
    """Pairs covering, `rounds` times each, every (animal, wrong sound) combination, the annotator's
    confusions (8 times more) and the empty answer: RLHF exploits a reward model's blind spots first.
    """
    by_animal = {a: [p for p in prompts if animal_of(p) == a] for a in SOUNDS}
    combos = [(a, answer(w)) for a in SOUNDS for w in SOUNDS if w != a]
    combos += [(a, answer(w)) for a, w in CONFUSIONS.items()] * 8 + [(a, "") for a in SOUNDS]
    rows = []
    for _ in range(rounds):
        for animal, wrong in combos:
            prompt = rng.choice(by_animal[animal])
            rows.append({"prompt": prompt, "chosen": answer(animal), "rejected": wrong})
    rng.shuffle(rows)
    return rows


def story(rng: random.Random) -> str:
    """One pretraining document: a few sentences about a few animals."""
    sentences = []
    for animal in rng.sample(list(SOUNDS), rng.randint(2, 4)):
        adjective = rng.choice([a for a in ADJECTIVES if a])
        sound = SOUNDS[animal]
        options = [
            f"The {animal} says {sound}.",
            f"The {adjective} {animal} lives {rng.choice(PLACES)}.",
            f"{rng.choice(TIMES)} the {animal} says {sound}.",
            f"The {animal} eats {rng.choice(FOODS)} and says {sound}.",
            f"{article(adjective).title()} {adjective} {animal} goes {sound}, {sound}.",
            f"What does the {animal} say? The {animal} says {sound}.",
            f"You can hear the {animal} {rng.choice(PLACES)}: {sound}!",
        ]
        sentences += rng.sample(options, rng.randint(1, 3))
    return " ".join(sentences)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def generate(out: Path) -> dict[str, int]:
    rng = random.Random(SEED)
    out.mkdir(parents=True, exist_ok=True)
    train_prompts, eval_prompts = split_prompts(rng, eval_share=0.25)

    stories = [story(rng) for _ in range(1500)]
    (out / "pretrain.txt").write_text("\n\n".join(stories) + "\n")

    def sft_rows(prompts: list[str], n: int) -> list[dict]:
        picks = [rng.choice(prompts) for _ in range(n)]
        return [{"prompt": p, "completion": sft_completion(rng, animal_of(p))} for p in picks]

    files = {
        "sft.jsonl": sft_rows(train_prompts, 2000),
        "sft_eval.jsonl": sft_rows(eval_prompts, 200),
        "preferences.jsonl": preferences(rng, train_prompts, rounds=15),
        "preferences_eval.jsonl": preferences(rng, eval_prompts, rounds=2),
        "prompts.jsonl": [{"prompt": rng.choice(train_prompts)} for _ in range(1000)],
        "prompts_eval.jsonl": [{"prompt": p} for p in rng.sample(eval_prompts, 256)],
        # The eval stage's held-out prompts with reference answers (drawn last: the files above stay as they were).
        "answers_eval.jsonl": [{"prompt": p, "reference": answer(animal_of(p))} for p in rng.sample(eval_prompts, 128)],
    }
    for name, rows in files.items():
        write_jsonl(out / name, rows)
    return {"pretrain.txt": len(stories), **{name: len(rows) for name, rows in files.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "examples" / "data")
    args = parser.parse_args()
    for name, count in generate(args.out).items():
        print(f"{args.out / name}: {count} records")


if __name__ == "__main__":
    main()
