"""What an rlhf stage optimises and what audits it: reward sources built from `rl.rewards` / `rl.audit`.

    rewards = build_rewards(ctx, ctx.stage.rewards)       # [Reward(name, weight, ...)]
    total, means = score_all(rewards, prompts, completions, columns)

Every source — a reward stage's model, a built-in verifier, a user's Python function — is a
`Reward` with one `score(prompts, completions, columns)`; the same objects feed TRL's
`reward_funcs` (with `reward_weights`), our PPO loop, the held-out audit and the eval stage.
"""

from .sources import Reward, build_rewards, score_all, weighted

__all__ = ["Reward", "build_rewards", "score_all", "weighted"]
