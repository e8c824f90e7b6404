"""algo r2d2's network and learner: the numpy twin against torch step by step (with episode
resets), value rescaling, the burn-in's missing gradient, n-step targets over a sequence with
an episode end inside against a hand computation, and the sequence priorities' eta mix."""

from __future__ import annotations

import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from soulsai.config import load_config
from soulsai.model.nets import cpu_state
from soulsai.model.numpy_r2d2 import NumpyRecurrentQ, r2d2_weight_shapes
from soulsai.model.obs import build_layout, obs_leaves
from soulsai.model.r2d2_net import rescale, unrescale
from soulsai.training.algorithms.r2d2 import R2D2Learner, build_network, nstep_returns
from soulsai.training.sequence_replay import SequenceReplay

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
DICT_SPACE = gym.spaces.Dict(
    {
        "pos": gym.spaces.Box(-3.0, 3.0, (2,), np.float32),
        "phase": gym.spaces.Discrete(3),
        "flags": gym.spaces.MultiBinary(2),
    }
)
BOX_SPACE = gym.spaces.Box(-2.0, 2.0, (3,), np.float32)


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cfg")
    shutil.copy(ROOT / "config" / "config_d.yaml", d / "config_d.yaml")
    return d


def make_cfg(config_dir, *sets: str):
    base = ["algo=r2d2", "dqn.hidden=[8]", "r2d2.core_size=6", "r2d2.chunk=4"]
    return load_config(config_dir, [*base, "r2d2.burn_in=2", "dqn.n_step=3", *sets])


def _batch(layout, items: list) -> dict[str, np.ndarray]:
    """Leaves name -> (N, ...) of a list of single observations."""
    each = [obs_leaves(layout, o, batched=False) for o in items]
    return {k: np.concatenate([e[k] for e in each]) for k in each[0]}


def _randomize(net: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        net.obs_norm.mean.normal_(0, 0.3, generator=g)
        net.obs_norm.var.uniform_(0.5, 2.0, generator=g)


@pytest.mark.parametrize("core", ["lstm", "gru"])
@pytest.mark.parametrize("space", [BOX_SPACE, DICT_SPACE], ids=["box", "dict"])
@pytest.mark.parametrize("dueling", [False, True])
def test_numpy_twin_equals_torch_step_by_step_with_resets(config_dir, core, space, dueling):
    cfg = make_cfg(config_dir, f"r2d2.core={core}", f"dqn.dueling={dueling}")
    cfg.dqn.normalize_obs = True
    layout = build_layout(space)
    net = build_network(cfg, layout, 4)
    _randomize(net, 3)
    state = cpu_state(net)
    want = r2d2_weight_shapes(cfg.dqn, cfg.r2d2, layout, 4)
    assert {k: tuple(v.shape) for k, v in state.items()} == want
    twin = NumpyRecurrentQ(state, cfg.dqn, cfg.r2d2, layout, 4)
    space.seed(1)
    B, T = 3, 7
    steps = [[space.sample() for _ in range(B)] for _ in range(T)]
    resets = {2: [0], 5: [1, 2]}  # before step t, these sequences start an episode
    h = twin.initial_state(B)
    got = []
    for t in range(T):
        for b in resets.get(t, []):
            h[b] = 0.0
        batch = _batch(layout, steps[t]) if not layout.plain else np.stack(steps[t])
        q, h = twin.step(batch, h)
        got.append(q)
    got = np.stack(got, axis=1)  # (B, T, A)
    for b in range(B):  # torch: each episode's span unrolled on its own from a zero state
        cuts = sorted({0, T, *(t for t, bs in resets.items() if b in bs)})
        for a, z in zip(cuts[:-1], cuts[1:], strict=True):
            seq = [steps[t][b] for t in range(a, z)]
            leaves = _batch(layout, seq) if not layout.plain else {"": np.stack(seq)}
            obs = {k: torch.as_tensor(v)[None] for k, v in leaves.items()}
            with torch.no_grad():
                q, _ = net.unroll(obs, torch.zeros(1, net.state_size))
            np.testing.assert_allclose(got[b, a:z], q[0].numpy(), rtol=1e-5, atol=1e-5)


def test_value_rescaling_and_its_inverse():
    x = torch.tensor([-1e4, -37.5, -1.0, -1e-3, 0.0, 2e-3, 0.7, 12.0, 3e5], dtype=torch.float64)
    for eps in (1e-3, 1e-2, 0.0):
        assert torch.allclose(unrescale(rescale(x, eps), eps), x, rtol=1e-9, atol=1e-9)
    assert torch.allclose(rescale(torch.tensor([3.0]), 0.0), torch.tensor([1.0]))  # sqrt(4) - 1


def _episode_replay(cfg, layout, truncated: bool) -> tuple[SequenceReplay, dict]:
    """One episode of 6 steps: chunk 0 (4 steps, stream 5) and chunk 1 (2 steps, ended:
    terminated at its last step unless `truncated`), rewards 1..6, observations 0.1 * step."""
    L, n = cfg.r2d2.chunk, cfg.dqn.n_step
    replay = SequenceReplay(8, L, n, cfg.r2d2.burn_in, layout, 12, 2)
    f = {
        "obs": np.zeros((2, L, 3), np.float32),
        "next_obs": np.array([[0.4] * 3, [0.6] * 3], np.float32),
        "action": np.array([[0, 1, 1, 0], [1, 0, 0, 0]]),
        "reward": np.array([[1, 2, 3, 4], [5, 6, 0, 0]], np.float32),
        "terminated": np.array([[0, 0, 0, 0], [0, 0 if truncated else 1, 0, 0]], np.uint8),
        "state": np.zeros((2, 12), np.float32),
        "burn_state": np.zeros((2, 12), np.float32),
        "stream": np.array([5, 5]),
        "index": np.array([0, 1]),
        "length": np.array([4, 2], np.int16),
        "ended": np.array([0, 1], np.uint8),
    }
    f["obs"][0] = (0.1 * np.arange(4))[:, None]
    f["obs"][1, :2] = (0.1 * np.arange(4, 6))[:, None]
    f["state"][1] = 0.05
    f["burn_state"][1] = 0.02
    replay.add(f, np.zeros(2, np.int64))
    return replay, f


@pytest.mark.parametrize("truncated", [False, True])
def test_nstep_targets_over_a_sequence_with_an_episode_end_inside(config_dir, truncated):
    cfg = make_cfg(config_dir, "r2d2.value_rescale=false", "dqn.gamma=0.9")
    layout = build_layout(BOX_SPACE)
    replay, _ = _episode_replay(cfg, layout, truncated)
    batch = replay.batch_at(np.array([0, 1]))
    # chunk 0 + the successor's 2 steps + its next_obs; chunk 1 + its own next_obs
    assert batch.avail.tolist() == [6, 2] and batch.length.tolist() == [4, 2]
    np.testing.assert_allclose(batch.obs[""][0, :7, 0], [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    np.testing.assert_allclose(batch.obs[""][1, :3, 0], [0.4, 0.5, 0.6])
    assert batch.reward[0, :6].tolist() == [1, 2, 3, 4, 5, 6]
    assert batch.has_burn.tolist() == [False, True]  # chunk 1 burns in chunk 0's last 2 steps
    np.testing.assert_allclose(batch.burn_obs[""][1, :, 0], [0.2, 0.3])
    learner = R2D2Learner(cfg, layout, 2, seed=0)
    _randomize(learner.online, 1)
    _randomize(learner.target, 2)
    learner.online.obs_norm.load_state_dict(learner.target.obs_norm.state_dict())
    _, _, q, td = learner.loss(batch)

    # by hand: Q values of both nets along each sequence from its start state
    g = 0.9
    for i, (start, avail) in enumerate([(batch.state[0], 6), (None, 2)]):
        with torch.no_grad():
            if start is None:  # chunk 1: burn-in from the burn state over chunk 0's last 2 steps
                burn = {"": torch.as_tensor(batch.burn_obs[""][1:2])}
                s = torch.as_tensor(batch.burn_state[1:2])
                _, h_on = learner.online.unroll(burn, s)
                _, h_tg = learner.target.unroll(burn, s)
            else:
                h_on = h_tg = torch.as_tensor(start)[None]
            obs = {"": torch.as_tensor(batch.obs[""][i : i + 1])}
            q_on = learner.online.unroll(obs, h_on)[0][0].numpy()
            q_tg = learner.target.unroll(obs, h_tg)[0][0].numpy()
        value = q_tg[np.arange(len(q_tg)), q_on.argmax(axis=1)]
        r = batch.reward[i]
        for t in range(batch.length[i]):
            k = min(3, avail - t)
            ret = sum(g**j * r[t + j] for j in range(k))
            ends = t + k == 6 - 4 * i and not truncated  # the terminated step is reached
            y = ret + (0.0 if ends else g**k * value[t + k])
            a = batch.action[i, t]
            assert q[i, t].item() == pytest.approx(q_on[t, a], abs=1e-5)
            assert td[i, t].item() == pytest.approx(abs(y - q_on[t, a]), abs=1e-4), (i, t)
        assert td[i, batch.length[i] :].abs().sum() == 0  # padding carries no error


def test_nstep_returns_against_a_hand_loop():
    rng = np.random.default_rng(0)
    B, L, n, g = 5, 6, 4, 0.95
    reward = rng.normal(size=(B, L + n - 1)).astype(np.float32)
    term = np.zeros((B, L + n - 1), bool)
    avail = np.array([L + n - 1, 3, L, L + 2, 1])
    for b in range(B):
        term[b, avail[b] - 1] = b % 2 == 1  # some sequences end in a termination
    ret, disc, pos = nstep_returns(
        torch.as_tensor(reward), torch.as_tensor(term), torch.as_tensor(avail), L, n, g
    )
    for b in range(B):
        for t in range(min(L, avail[b])):
            k = min(n, avail[b] - t)
            want, alive = 0.0, True
            for j in range(k):
                if alive:
                    want += g**j * reward[b, t + j]
                    alive = not term[b, t + j]
            assert ret[b, t].item() == pytest.approx(want, abs=1e-5)
            assert disc[b, t].item() == pytest.approx(g**k if alive else 0.0)
            assert pos[b, t].item() == t + k


def test_the_burn_in_contributes_no_gradient(config_dir):
    cfg = make_cfg(config_dir)
    layout = build_layout(BOX_SPACE)
    replay, _ = _episode_replay(cfg, layout, truncated=False)
    batch = replay.batch_at(np.array([1, 1, 0]))
    assert batch.has_burn.any()
    learner = R2D2Learner(cfg, layout, 2, seed=0)
    _randomize(learner.online, 4)

    def grads(initial) -> list[torch.Tensor]:
        learner.online.zero_grad(set_to_none=True)
        if initial is not None:
            learner.initial_states = lambda b: initial  # type: ignore[method-assign]
        loss = learner.loss(batch)[0]
        loss.backward()
        return [p.grad.clone() for p in learner.online.parameters() if p.grad is not None]

    with torch.no_grad():
        burned = learner.initial_states(batch)
    assert not torch.equal(burned[0][0], torch.as_tensor(batch.state[0]))  # the burn-in ran
    assert not burned[0].requires_grad
    normal = grads(None)
    constant = grads(tuple(s.clone() for s in burned))  # the same states as constants
    assert len(normal) == len(constant)
    for a, b in zip(normal, constant, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_sequence_priorities_mix_max_and_mean_by_eta(config_dir):
    cfg = make_cfg(config_dir, "r2d2.priority_eta=0.75")
    learner = R2D2Learner(cfg, build_layout(BOX_SPACE), 2, seed=0)
    td = torch.tensor([[0.5, 2.0, 1.0, 0.0], [3.0, 0.0, 0.0, 0.0]])
    got = learner.priorities(td, np.array([3, 1]))
    np.testing.assert_allclose(got, [0.75 * 2.0 + 0.25 * 3.5 / 3, 0.75 * 3.0 + 0.25 * 3.0])


def test_an_update_changes_the_weights_and_sets_sequence_priorities(config_dir):
    cfg = make_cfg(config_dir)
    layout = build_layout(BOX_SPACE)
    replay, _ = _episode_replay(cfg, layout, truncated=True)
    learner = R2D2Learner(cfg, layout, 2, seed=0)
    before = cpu_state(learner.online)
    info = learner.update(replay.batch_at(np.array([0, 1])), torch.tensor([1.0, 0.5]))
    assert np.isfinite(info["loss"]) and learner.updates == 1
    assert learner.td_errors is not None and learner.td_errors.shape == (2,)
    after = cpu_state(learner.online)
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    ("sets", "key"),
    [
        (["r2d2.burn_in=5"], "r2d2.burn_in"),
        (["dqn.n_step=5"], "dqn.n_step"),
        (["dqn.noisy=true"], "dqn.noisy"),
        (["dqn.n_quantiles=8"], "dqn.n_quantiles"),
        (["dqn.double=false"], "dqn.double"),
    ],
)
def test_config_checks_name_the_key(config_dir, sets, key):
    from soulsai.config.schema import check_algo_config
    from soulsai.errors import ConfigError

    with pytest.raises(ConfigError, match=key):
        check_algo_config(make_cfg(config_dir, *sets))
    check_algo_config(make_cfg(config_dir))  # chunk 4, burn-in 2, n-step 3: fine
