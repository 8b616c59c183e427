"""The pure pieces of the PPO loop (`refinery_trainer.ppo`) against hand-computed numbers."""

from __future__ import annotations

import pytest
import torch

from refinery_trainer.ppo import (KLController, ValueModel, clipped_policy_loss, clipped_value_loss, completion_mask, gae,
                                  kl_penalised_rewards, masked_whiten, step_prompts)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float)


def test_gae_by_hand():
    # gamma 1, lambda 0.5: deltas (0, 0, 0.5) from the end: A2 = 0.5, A1 = 0 + 0.5 A2, A0 = 0 + 0.5 A1.
    advantages, returns = gae(t([0, 0, 1]), t([0.5, 0.5, 0.5]), t([1, 1, 1]), gamma=1.0, lam=0.5)
    assert advantages.tolist() == [[0.125, 0.25, 0.5]]
    assert returns.tolist() == [[0.625, 0.75, 1.0]]


def test_gae_with_lambda_1_is_the_discounted_return_minus_the_value():
    rewards, values = t([1, 0, 2]), t([0.5, 1, 1.5])
    advantages, returns = gae(rewards, values, t([1, 1, 1]), gamma=0.9, lam=1.0)
    # G2 = 2, G1 = 0.9 * 2, G0 = 1 + 0.9 * 1.8
    assert returns[0].tolist() == pytest.approx([2.62, 1.8, 2.0])
    assert advantages[0].tolist() == pytest.approx([2.12, 0.8, 0.5])


def test_gae_ends_each_episode_at_its_last_token():
    # The second row ends after two tokens: whatever sits after it (99) must not leak back.
    rewards, values, mask = t([0, 0, 1], [0, 1, 99]), t([0.5, 0.5, 0.5], [0.5, 0.5, 99]), t([1, 1, 1], [1, 1, 0])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    assert advantages[1].tolist() == [0.25, 0.5, 0.0]
    assert returns[1].tolist() == [0.75, 1.0, 0.0]


def test_clipped_policy_loss():
    old = torch.zeros(1, 4)
    new = torch.log(t([1.0, 1.5, 0.5, 1.1])).requires_grad_(True)
    advantages, mask = t([1.0, 1.0, -1.0, 2.0]), t([1, 1, 1, 1])
    loss, clipped = clipped_policy_loss(new, old, advantages, mask, clip_range=0.2)
    # -A x ratio, the ratio held within [0.8, 1.2] whenever that is the pessimistic side.
    assert loss.item() == pytest.approx((-1.0 - 1.2 + 0.8 - 2.2) / 4)
    assert clipped.item() == pytest.approx(0.5)  # tokens 2 and 3
    loss.backward()
    assert new.grad[0, 1] == 0 and new.grad[0, 2] == 0  # clipped: no push further away
    assert new.grad[0, 0] != 0 and new.grad[0, 3] != 0


def test_clipped_policy_loss_ignores_masked_tokens():
    loss, _ = clipped_policy_loss(torch.zeros(1, 2), torch.zeros(1, 2), t([1.0, 100.0]), t([1, 0]), clip_range=0.2)
    assert loss.item() == -1.0


def test_clipped_value_loss():
    old, returns, mask = t([0.0, 0.0]), t([1.0, -1.0]), t([1, 1])
    # V moved 0.5 toward the return: the clipped V (0.2) is further from it, and the max keeps it.
    near = clipped_value_loss(t([0.5, -0.5]), old, returns, mask, clip_range=0.2)
    assert near.item() == pytest.approx(0.5 * 0.8**2)
    # V overshoots past the return: the unclipped error is the larger one.
    far = clipped_value_loss(t([3.0, 0.0]), old, returns, mask, clip_range=0.2)
    assert far.item() == pytest.approx(0.5 * (2.0**2 + 1.0**2) / 2)


def test_kl_penalised_rewards_put_the_score_on_the_last_token():
    logprobs, ref, mask = t([-1.0, -1.0, -1.0], [-1.0, -2.0, 0.0]), t([-1.5, -1.0, -1.0], [-1.0, -1.0, -5.0]), t([1, 1, 1], [1, 1, 0])
    rewards, kl = kl_penalised_rewards(torch.tensor([10.0, 20.0]), logprobs, ref, mask, beta=0.1)
    assert kl.tolist() == [[0.5, 0.0, 0.0], [0.0, -1.0, 0.0]]
    torch.testing.assert_close(rewards, t([-0.05, 0.0, 10.0], [0.0, 20.1, 0.0]))


def test_adaptive_kl_controller():
    fixed = KLController(0.05)
    assert fixed.update(100.0, 32) == 0.05
    assert KLController(1.0, target=1.0, horizon=100).update(10.0, 100) == pytest.approx(1.2)  # error clipped at +0.2
    assert KLController(1.0, target=1.0, horizon=100).update(0.0, 100) == pytest.approx(0.8)
    assert KLController(1.0, target=2.0, horizon=100).update(2.2, 50) == pytest.approx(1.05)
    controller = KLController(0.1, target=1.0, horizon=10)
    for _ in range(10):  # KL stays above target: beta keeps rising toward a stronger penalty
        controller.update(3.0, 1)
    assert controller.beta == pytest.approx(0.1 * 1.02**10)


def test_completion_mask_keeps_the_eos_and_drops_what_follows():
    ids = torch.tensor([[5, 6, 2, 0, 0], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0]])
    assert completion_mask(ids, eos_token_id=2).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_masked_whiten():
    x, mask = t([1.0, 3.0, 100.0]), t([1, 1, 0])
    assert masked_whiten(x, mask)[0].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-4)


def test_value_model_reads_the_reward_head_at_every_token():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, num_labels=1, pad_token_id=0)
    reward_model = LlamaForSequenceClassification(config).eval()
    ids = torch.tensor([[3, 4, 5, 6], [7, 8, 9, 10]])
    mask, positions = torch.ones_like(ids), torch.arange(4).expand(2, 4)
    values = ValueModel(reward_model)(ids, mask, positions)
    assert values.shape == (2, 4)
    # At the last token the critic says what the reward model says of the whole text.
    assert values[:, -1].tolist() == pytest.approx(reward_model(input_ids=ids).logits[:, 0].tolist(), abs=1e-5)
    # At a prefix, what the reward model says of that prefix.
    assert values[:, 1].tolist() == pytest.approx(reward_model(input_ids=ids[:, :2]).logits[:, 0].tolist(), abs=1e-5)


def test_step_prompts_walk_seeded_epochs():
    prompts = [f"p{i}" for i in range(10)]
    steps = [step_prompts(prompts, s, 4, seed=0) for s in range(5)]
    assert steps[0] == step_prompts(prompts, 0, 4, seed=0)  # a pure function of the step: resumes sample alike
    first_epoch = steps[0] + steps[1] + steps[2][:2]
    assert sorted(first_epoch) == sorted(prompts)
    assert steps[0] != step_prompts(prompts, 0, 4, seed=1)
