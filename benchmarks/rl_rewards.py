"""What verifier rewards and the held-out audit cost per RL step, against a step without them.

    OMP_NUM_THREADS=1 python benchmarks/rl_rewards.py                 # 40 steps, 2 repeats, interleaved
    python benchmarks/rl_rewards.py --steps 60 --repeats 3 --workdir /tmp/rl-rewards

pretrain → sft → reward run once on examples/data (tests/trainer/example_task.py's settings), then
rlhf (rloo, 32 completions = 8 prompts x 4 per step, the example's settings) from that sft policy,
on prompts with references (the preferences' right answers; held out: answers_eval.jsonl):

- `baseline`: the reward model alone, no held-out evaluation during training (rl.auditSteps past
  the last step) — a step as it was before verifiers and the audit;
- `verifiers`: the reward model plus exactMatch, numeric (math-verify) and regex verifiers;
- `python`: the reward model plus a user's Python verifier (a file imported by the stage);
- `watch`: the reward model with the held-out watch at its default cadence (every
  training.loggingSteps, 5 here: greedy completions of 128 held-out prompts, scored, exact match,
  distinct answers) — what every rlhf stage now pays unless rl.auditSteps says otherwise;
- `audit`: the reward model, audited by a second reward model every 10 steps (the same held-out
  evaluation, scored by both).

Seconds per step come from the stage's own training log (`metrics.jsonl`: the time of each log
line), from the first logged step to the last, so model loading and the evaluations before and
after training are not counted; the audit's evaluations inside the loop are. Configurations run
interleaved, `--repeats` times each, so a busy machine slows them alike; the ratio to `baseline`
is the figure. The last stdout line is one JSON object of the figures.
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
os.environ.setdefault("REFINERY_TERMINATION_LOG", os.devnull)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the example task's settings live with the tests

from tests.trainer.example_task import DATA, example_models, example_run, model_dir, run_stage  # noqa: E402

RL = {"algorithm": "rloo", "numGenerations": 4, "maxCompletionLength": 4, "beta": 0.05, "evalPrompts": 128}
NEVER = 10_000_000  # rl.auditSteps past the last step: no held-out evaluation during training
USER_VERIFIER = "def score(prompts, completions, references, **columns):\n" \
                "    return [float(c.strip().lower() == str(r).strip().lower()) for c, r in zip(completions, references)]\n"


def configs(ws: Path) -> dict[str, dict]:
    (ws / "verify.py").write_text(USER_VERIFIER)
    model = {"model": "reward"}
    return {
        "baseline": {"rewards": [model], "auditSteps": NEVER},
        "verifiers": {"rewards": [model, {"exactMatch": {}}, {"numeric": {}}, {"regex": {"pattern": r"^ \w+$"}}],
                      "auditSteps": NEVER},
        "python": {"rewards": [model, {"python": {"path": str(ws / "verify.py"), "function": "score"}}],
                   "auditSteps": NEVER},
        "watch": {"rewards": [model]},
        "audit": {"rewards": [model], "audit": [{"model": "judge"}], "auditSteps": 10},
    }


def seconds_per_step(log: Path) -> float:
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    logged = [e for e in lines if "loss" in e and e.get("time")]
    first, last = logged[0], logged[-1]
    return (last["time"] - first["time"]) / (last["step"] - first["step"])


def run(ws: Path, models: Path, name: str, rl: dict, steps: int, repeat: int) -> float:
    stage = f"{name}-{repeat}"
    paths = {"reward": str(model_dir(models, "reward")), "judge": str(model_dir(models, "reward"))}
    spec = example_run(ws, stage, "rlhf", from_="sft", stage={"rl": {**RL, **rl}},
                       training={"maxSteps": steps, "saveSteps": steps, "loggingSteps": 5},
                       initModel=str(model_dir(models, "sft")), models=paths)
    spec["stage"]["data"] = {"path": str(ws / "refs.jsonl"), "evalPath": str(DATA / "answers_eval.jsonl")}
    run_stage(ws, spec)
    return seconds_per_step(ws / "p" / stage / "attempt-1" / "metrics.jsonl")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    ws = args.workdir or Path(tempfile.mkdtemp(prefix="rl-rewards-"))
    models = example_models(ws / "models")
    rows = [json.loads(line) for line in (DATA / "preferences.jsonl").read_text().splitlines()][:1000]
    (ws / "refs.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"], "reference": r["chosen"]}) + "\n" for r in rows))
    times: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        for name, rl in configs(ws).items():
            times.setdefault(name, []).append(run(ws, models, name, rl, args.steps, repeat))
            print(f"{name} #{repeat}: {times[name][-1]:.3f} s/step", flush=True)
    base = statistics.median(times["baseline"])
    figures = {name: {"secondsPerStep": statistics.median(t), "ratio": statistics.median(t) / base, "runs": t}
               for name, t in times.items()}
    print(f"{'configuration':<12} {'s/step':>8} {'x baseline':>10}")
    for name, f in figures.items():
        print(f"{name:<12} {f['secondsPerStep']:>8.3f} {f['ratio']:>10.2f}")
    print(json.dumps({"steps": args.steps, "repeats": args.repeats, "cpus": os.cpu_count(), **figures}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
