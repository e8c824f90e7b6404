"""Valid-action masks: reading and checking them, masked exploration and greedy choice, the
masked double-DQN target and PPO's masked categorical worked by hand, numpy == torch, and the
mask bits on the wire."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from soulsai.errors import ConfigError, ProtocolError
from soulsai.model import masks, masks_torch
from soulsai.transport.envelope import ExperienceSpec, decode_experience, encode_experience

# chi-square 0.999 quantiles by degrees of freedom (a seeded test: never flaky, only a check
# that the draw is uniform rather than, say, biased to the first valid action)
CHI2_999 = {4: 18.467, 5: 20.515, 19: 43.820}


def chi_square(counts: np.ndarray, expected: np.ndarray) -> float:
    return float(((counts - expected) ** 2 / expected).sum())


def soulsgym_like_masks(rng: np.random.Generator, b: int, n: int = 20) -> np.ndarray:
    """Random masks with at least one valid action per row, many invalid (an animation)."""
    mask = rng.random((b, n)) < 0.3
    mask[np.arange(b), rng.integers(0, n, b)] = True
    return mask


def test_masked_epsilon_greedy_never_picks_an_invalid_action() -> None:
    rng = np.random.default_rng(0)
    mask = soulsgym_like_masks(rng, 4096)
    q = rng.normal(size=mask.shape) + 5.0 * ~mask  # invalid actions look best
    for eps in (0.0, 0.3, 1.0):
        for _ in range(10):
            a = masks.masked_epsilon_greedy(q, mask, eps, rng)
            assert a.dtype == np.int64 and mask[np.arange(len(a)), a].all()
    greedy = masks.masked_epsilon_greedy(q, mask, 0.0, rng)
    np.testing.assert_array_equal(greedy, np.where(mask, q, -np.inf).argmax(axis=1))


def test_masked_exploration_is_uniform_among_the_valid_actions() -> None:
    rng = np.random.default_rng(1)
    mask = np.zeros((60000, 9), bool)
    valid = [0, 2, 3, 7, 8]
    mask[:, valid] = True
    q = np.zeros(mask.shape)
    q[:, 2] = 1.0  # greedy choice; epsilon = 1 must ignore it
    counts = np.bincount(masks.masked_epsilon_greedy(q, mask, 1.0, rng), minlength=9)
    assert counts[[1, 4, 5, 6]].sum() == 0
    expected = np.full(len(valid), len(mask) / len(valid))
    assert chi_square(counts[valid], expected) < CHI2_999[len(valid) - 1]
    # rows with different masks: each row uniform over its own valid actions
    mask = soulsgym_like_masks(rng, 20000, 6)
    mask[:, 5] = True
    hits = masks.uniform_valid(mask, rng) == 5
    assert hits.sum() == pytest.approx((1.0 / mask.sum(axis=1)).sum(), rel=0.05)


def test_masked_double_dqn_target_by_hand() -> None:
    q_online = torch.tensor([[1.0, 9.0, 3.0], [5.0, 2.0, 4.0], [0.0, 0.0, 0.0]])
    q_target = torch.tensor([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0], [7.0, 8.0, 9.0]])
    mask = torch.tensor([[True, False, True], [False, True, True], [False, False, False]])
    reward = torch.tensor([1.0, 2.0, 3.0])
    done = torch.tensor([0.0, 0.0, 1.0])  # the last s' is terminal: its empty mask is fine
    gamma_k = torch.tensor([0.9, 0.81, 0.9])
    # row 0: valid {0, 2}, online argmax 2 (not 1, the best invalid): 1 + 0.9 * 30 = 28
    # row 1: valid {1, 2}, online argmax 2: 2 + 0.81 * 60 = 50.6; row 2: done: 3
    target = masks_torch.masked_double_dqn_target(q_online, q_target, mask, reward, done, gamma_k)
    torch.testing.assert_close(target, torch.tensor([28.0, 50.6, 3.0]))
    # unmasked, row 0 would have taken action 1: 1 + 0.9 * 20
    everything = torch.ones_like(mask)
    unmasked = masks_torch.masked_double_dqn_target(
        q_online, q_target, everything, reward, done, 0.9
    )
    assert unmasked[0].item() == pytest.approx(19.0)


def test_masked_log_prob_and_entropy_by_hand() -> None:
    logits = torch.tensor([[1.0, 100.0, 2.0, 0.0], [0.5, 0.5, 0.5, 0.5]], requires_grad=True)
    mask = torch.tensor([[True, False, True, False], [True, True, True, False]])
    # row 0: softmax over (1, 2): p = (1, e) / (1 + e); row 1: uniform over 3
    p0 = np.array([1.0, math.e]) / (1.0 + math.e)
    logp = masks_torch.masked_log_prob(logits, mask, torch.tensor([2, 1]))
    torch.testing.assert_close(logp, torch.tensor([math.log(p0[1]), -math.log(3.0)]))
    entropy = masks_torch.masked_entropy(logits, mask)
    expected = torch.tensor([-(p0 * np.log(p0)).sum(), math.log(3.0)], dtype=torch.float32)
    torch.testing.assert_close(entropy, expected)
    (logp.sum() + entropy.sum()).backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0, 1] == 0 and logits.grad[0, 3] == 0 and logits.grad[1, 3] == 0
    np.testing.assert_allclose(masks.masked_entropy(logits.detach().numpy(), mask.numpy()),
                               expected.numpy(), rtol=1e-6)  # fmt: skip


def test_numpy_masked_log_probs_equal_torch() -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(scale=3.0, size=(512, 20)).astype(np.float32)
    mask = soulsgym_like_masks(rng, 512)
    actions, logp = masks.masked_sample(logits, mask, rng)
    assert mask[np.arange(512), actions].all()
    expected = masks_torch.masked_log_prob(torch.as_tensor(logits), torch.as_tensor(mask),
                                           torch.as_tensor(actions))  # fmt: skip
    np.testing.assert_allclose(logp, expected.numpy(), rtol=1e-5, atol=1e-5)
    all_np = masks.masked_log_softmax(logits, mask)
    all_t = masks_torch.masked_log_probs(torch.as_tensor(logits), torch.as_tensor(mask)).numpy()
    np.testing.assert_allclose(all_np[mask], all_t[mask], rtol=1e-5, atol=1e-5)
    assert np.isneginf(all_np[~mask]).all() and (np.exp(all_t[~mask]) == 0).all()


def test_masked_sampling_follows_the_masked_distribution() -> None:
    rng = np.random.default_rng(3)
    logits = np.array([[0.0, 1.0, 5.0, -1.0, 0.5, 0.0, 2.0]] * 50000, np.float32)
    mask = np.array([[True, True, False, True, True, False, True]] * 50000)
    actions, _ = masks.masked_sample(logits, mask, rng)
    counts = np.bincount(actions, minlength=7)
    assert counts[2] == counts[5] == 0
    p = np.exp(masks.masked_log_softmax(logits[:1], mask[:1]))[0]
    valid = mask[0]
    assert chi_square(counts[valid], p[valid] * len(actions)) < CHI2_999[valid.sum() - 1]
    torch.manual_seed(0)
    t_actions = masks_torch.masked_sample(torch.as_tensor(logits), torch.as_tensor(mask))
    assert torch.as_tensor(mask)[torch.arange(len(t_actions)), t_actions].all()


@pytest.mark.parametrize(
    ("mask", "needle"),
    [
        (np.zeros(5, bool), "allows no action"),
        (np.ones(4, bool), "has shape (4,), expected (5,)"),
        (np.ones((2, 5), bool), "has shape (2, 5), expected (5,)"),
        (np.array([1, 0, 2, 0, 1]), "only 0/1"),
        (np.array([1.0, np.nan, 0, 0, 1]), "only 0/1"),
        (np.array(["1", "0", "1", "1", "1"]), "only 0/1"),
    ],
)
def test_a_bad_mask_from_the_env_is_a_config_error_naming_the_setting(mask, needle) -> None:
    with pytest.raises(ConfigError) as err:
        masks.mask_from_info({"action_mask": mask}, "action_mask", 5, 1)
    assert str(err.value).startswith("env.action_mask: info['action_mask']")
    assert needle in str(err.value)


def test_masks_from_info_and_from_action_masks() -> None:
    got = masks.mask_from_info({"action_mask": np.array([0, 1, 1], np.int8)}, "action_mask", 3, 1)
    np.testing.assert_array_equal(got, [[False, True, True]])
    batched = {"m": np.array([[1, 0], [0, 1]]), "_m": np.array([True, True])}
    np.testing.assert_array_equal(masks.mask_from_info(batched, "m", 2, 2), [[1, 0], [0, 1]])
    with pytest.raises(ConfigError, match=r"missing for env copies \[1\]"):
        masks.mask_from_info({**batched, "_m": np.array([True, False])}, "m", 2, 2)
    with pytest.raises(ConfigError, match="has no 'm'"):
        masks.mask_from_info({}, "m", 2, 1)
    empty_ok = masks.check_mask(np.array([[0, 0], [0, 1]]), 2, 2, "x", np.array([True, False]))
    np.testing.assert_array_equal(empty_ok, [[True, True], [False, True]])

    class Masked(gym.Wrapper):
        def action_masks(self) -> np.ndarray:
            return np.array([True, False])

    env = gym.wrappers.TimeLimit(Masked(gym.make("CartPole-v1")), 10)
    np.testing.assert_array_equal(masks.mask_from_env(env, 2, 1), [[True, False]])
    vec = gym.vector.SyncVectorEnv([lambda: Masked(gym.make("CartPole-v1"))] * 3)
    assert masks.mask_from_env(vec, 2, 3).shape == (3, 2)
    with pytest.raises(ConfigError, match="no action_masks"):
        masks.mask_from_env(gym.make("CartPole-v1"), 2, 1)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 20, 64])
def test_mask_bits_round_trip_through_the_wire(n: int) -> None:
    rng = np.random.default_rng(n)
    mask = soulsgym_like_masks(rng, 33, n)
    bits = masks.pack_mask(mask)
    assert bits.dtype == np.uint8 and bits.shape == (33, math.ceil(n / 8))
    spec = ExperienceSpec(fields={"next_mask": masks.mask_field(n)})
    exp = decode_experience(encode_experience("c", 1, {"next_mask": bits}), spec)
    np.testing.assert_array_equal(masks.check_mask_bits(exp.fields["next_mask"], n), mask)


def test_received_mask_bits_without_a_valid_action_or_with_padding_are_rejected() -> None:
    mask = np.ones((3, 20), bool)
    mask[1] = False
    bits = masks.pack_mask(mask)
    with pytest.raises(ProtocolError) as err:
        masks.check_mask_bits(bits, 20)
    assert err.value.reason == "bad_mask"
    masks.check_mask_bits(bits, 20, allow_empty=np.array([False, True, False]))  # terminated
    bits = masks.pack_mask(np.ones((3, 20), bool))
    bits[2, -1] |= 0x01  # a bit beyond action 19
    with pytest.raises(ProtocolError, match="padding"):
        masks.check_mask_bits(bits, 20)


def test_the_client_side_modules_import_without_torch() -> None:
    """What a client acts with (layout, numpy encoder, wire fields, masks) needs no torch."""
    import subprocess
    import sys

    code = (
        "import sys; import soulsai.model.obs, soulsai.model.obs_encode, "
        "soulsai.model.obs_wire, soulsai.model.masks; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
