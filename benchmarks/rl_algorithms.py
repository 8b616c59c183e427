"""PPO vs RLOO on the example task, side by side: held-out mean reward, KL and time at equal steps.

    OMP_NUM_THREADS=1 python benchmarks/rl_algorithms.py                      # steps 10 20 40, seeds 0 1 2
    python benchmarks/rl_algorithms.py --steps 25 --seeds 0 1 --algorithms ppo rloo --workdir /tmp/rl

pretrain → sft → reward run once on examples/data (the animal-sounds task, with the settings of
`tests/trainer/example_task.py`), then rlhf from that sft policy and reward model, once per
(algorithm, steps, seed): the same prompts, batch (32 completions = 8 prompts x 4 per step),
KL weight (beta 0.05) and completion length, through `refinery-train` like any stage. A PPO step
does `rl.ppoEpochs` (4) Adam updates on its rollout where RLOO does one, so a step costs it more
time (`seconds` is there to compare at equal time too) and moves the policy ~4x as far at the same
learning rate: RLOO runs at the example's 1e-3, PPO at `--ppo-learning-rate` (3e-4; at 1e-3 it
collapses in its first steps on this task: KL ~5 per token, reward below the sft policy's).

Figures per (algorithm, steps): `meanReward` (greedy completions of 128 held-out prompts scored
by the reward model) — mean and standard deviation over seeds (the run-to-run noise) — `kl`
(per completion token, last logging window) and `seconds` per run. `baselineMeanReward` is the
sft policy on the same prompts. The last stdout line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: a shared machine, stable timings
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("REFINERY_TERMINATION_LOG", os.devnull)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the example task's settings live with the tests

from tests.trainer.example_task import example_models, example_run, model_dir, run_stage  # noqa: E402

RL = {"numGenerations": 4, "maxCompletionLength": 4, "beta": 0.05, "evalPrompts": 128}


def rlhf(ws: Path, models: Path, algorithm: str, steps: int, seed: int, learning_rate: float) -> dict[str, float]:
    name = f"{algorithm}-{steps}-{seed}-lr{learning_rate:.0e}".replace("e-0", "em").replace("+", "")
    run = example_run(ws, name, "rlhf", from_="sft", stage={"rewardModel": "reward", "rl": {**RL, "algorithm": algorithm}},
                      training={"maxSteps": steps, "saveSteps": steps, "loggingSteps": min(25, steps), "seed": seed,
                                "learningRate": learning_rate},
                      initModel=str(model_dir(models, "sft")), rewardModel=str(model_dir(models, "reward")))
    start = time.perf_counter()
    metrics = run_stage(ws, run)["metrics"]
    return {**metrics, "seconds": time.perf_counter() - start}


def summary(runs: list[dict[str, float]]) -> dict[str, float]:
    rewards = [r["meanReward"] for r in runs]
    return {
        "meanReward": statistics.fmean(rewards),
        "meanRewardStd": statistics.stdev(rewards) if len(rewards) > 1 else 0.0,
        "meanRewardRuns": rewards,
        "kl": statistics.fmean(r["kl"] for r in runs),
        "seconds": statistics.fmean(r["seconds"] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--algorithms", nargs="+", default=["rloo", "ppo"], choices=["rloo", "grpo", "ppo"])
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="rloo and grpo (default: 1e-3)")
    parser.add_argument("--ppo-learning-rate", type=float, default=3e-4, help="ppo (default: 3e-4)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()

    ws = args.workdir or Path(tempfile.mkdtemp(prefix="rl-algorithms-"))
    models = example_models(ws / "models")
    rates = {algorithm: args.ppo_learning_rate if algorithm == "ppo" else args.learning_rate for algorithm in args.algorithms}
    figures: dict = {"steps": args.steps, "seeds": args.seeds, "learningRate": rates}
    for steps in args.steps:
        for algorithm in args.algorithms:
            runs = [rlhf(ws / "rlhf", models, algorithm, steps, seed, rates[algorithm]) for seed in args.seeds]
            figures["baselineMeanReward"] = runs[0]["baselineMeanReward"]
            figures.setdefault(algorithm, {})[str(steps)] = result = summary(runs)
            print(f"{algorithm:5s} {steps:4d} steps: meanReward {result['meanReward']:.3f} ± {result['meanRewardStd']:.3f} "
                  f"(baseline {figures['baselineMeanReward']:.3f}), kl {result['kl']:.3f}, {result['seconds']:.1f} s/run",
                  flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
