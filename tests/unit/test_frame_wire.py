"""Stacked frames end to end on one machine: Gymnasium's FrameStackObservation -> DQNActor
(frame rows) -> envelope (lz4) -> the node's spec and frame store: the learner's stacks are
the ones the policy acted on, and each frame crossed the wire once (bytes: bench/frames.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from soulsai.client.dqn_actor import DQNActor
from soulsai.config import load_config
from soulsai.config.schema import AtariConfig
from soulsai.errors import ConfigError
from soulsai.model.specs import dqn_experience_spec, dqn_frame_spec, stacked_frames
from soulsai.training.frame_replay import FrameReplay
from soulsai.transport.batch import LayoutCache, decode_experience_rows
from soulsai.transport.envelope import encode_experience

ROOT = Path(__file__).resolve().parents[2]
FRAME = (6, 5)
K, N_STEP, GAMMA = 4, 3, 0.9


class Frames(gym.Env):
    """Frames whose first two bytes are a unique id; episodes end at random (either way)."""

    observation_space = gym.spaces.Box(0, 255, FRAME, np.uint8)
    action_space = gym.spaces.Discrete(3)
    next_id = 1

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def _frame(self) -> np.ndarray:
        f = self.rng.integers(0, 256, FRAME, dtype=np.uint8)
        f.flat[0], f.flat[1] = divmod(Frames.next_id, 256)
        Frames.next_id += 1
        return f

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        return self._frame(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        end = self.rng.random()
        return self._frame(), float(self.rng.normal()), end < 0.06, 0.06 <= end < 0.1, {}


def ids(frames: np.ndarray) -> tuple[int, ...]:
    flat = frames.reshape(len(frames), -1).astype(np.int64)
    return tuple((flat[:, 0] * 256 + flat[:, 1]).tolist())


class _Greedy:
    def act(self, obs, epsilon, rng, out=None, mask=None):
        actions = np.zeros(len(obs), np.int64)
        if out is not None:
            out[...] = actions
        return actions


def config(frame_stack: int = K) -> Any:
    cfg = load_config(ROOT / "config")
    cfg.env.atari = AtariConfig(frame_stack=frame_stack)
    cfg.env.num_envs, cfg.dqn.n_step, cfg.dqn.gamma = 2, N_STEP, GAMMA
    cfg.client.batch_size, cfg.client.flush_interval = 8, 60.0
    return cfg


def run(cfg: Any, envs: list[gym.Env], steps: int, seed: int = 0):
    """The sampler's loop, with LocalVectorEnv's stepping: returns the messages and the stacks
    the policy acted on (including true final observations), keyed by their newest frame."""
    space = envs[0].observation_space
    actor = DQNActor(cfg, space, envs[0].action_space, 0, np.random.default_rng(seed))
    actor.set_model(0, _Greedy(), {})
    rows, acted, messages = actor.rows, {}, []
    for i, env in enumerate(envs):
        rows.obs[0, i] = env.reset()[0]
    for _ in range(steps):
        t = rows.t
        for i in range(len(envs)):
            acted[ids(rows.obs[t, i])[-1]] = ids(rows.obs[t, i])
        actions = actor.act(rows.obs[t], 0)
        for i, env in enumerate(envs):
            obs, reward, term, trunc, _ = env.step(actions[i])
            rows.reward[t, i] = reward
            if term or trunc:
                rows.terminated[t, i], rows.truncated[t, i] = term, trunc
                rows.final_obs[t, i] = obs
                acted[ids(obs)[-1]] = ids(obs)
                obs, _ = env.reset()
            rows.obs[t + 1, i] = obs
        messages += actor.observe()
    messages += actor.finish()
    return messages, acted


def test_the_frame_store_rebuilds_the_stacks_the_policy_acted_on_through_the_wire() -> None:
    cfg = config()
    envs = [gym.wrappers.FrameStackObservation(Frames(s), K) for s in range(2)]
    space = envs[0].observation_space
    frame_space = stacked_frames(cfg, space)
    assert frame_space is not None and frame_space.shape == FRAME
    messages, acted = run(cfg, envs, 300)
    spec = dqn_frame_spec(frame_space, envs[0].action_space, N_STEP, 4096, 1 << 20)
    raws = [encode_experience("c", mid, f, "lz4", {"frame"}) for mid, f in messages]
    rows = decode_experience_rows(raws, spec, LayoutCache())
    assert not rows.errors
    f = rows.fields
    frames_sent = [ids(f["frame"][j : j + 1])[0] for j in range(len(f["seq"]))]
    assert len(frames_sent) == len(set(frames_sent))  # each frame once
    store = FrameReplay(1000, FRAME, K, 3, seed=0)
    discount = (GAMMA ** f["steps"].astype(np.float64) * (1 - f["terminated"])).astype(np.float32)
    store.add_rows(
        np.zeros(len(f["seq"]), np.int64),  # one client
        f["stream"],
        f["seq"],
        f["flags"],
        f["frame"],
        f["action"],
        f["reward"],
        f["steps"],
        discount,
    )
    got, obs, nxt = store.complete()
    assert len(got) > 200
    for o, x in zip(store.stacks(obs), store.stacks(nxt), strict=True):
        assert acted[ids(o)[-1]] == ids(o)
        assert acted[ids(x)[-1]] == ids(x)


def test_a_stacking_wrapper_with_zero_padding_is_refused_by_name() -> None:
    cfg = config()
    envs = [gym.wrappers.FrameStackObservation(Frames(s), K, padding_type="zero") for s in range(2)]
    with pytest.raises(ConfigError, match="env.atari.frame_stack"):
        run(cfg, envs, 100)


def test_without_a_frame_stack_transitions_carry_whole_observations() -> None:
    cfg = config(frame_stack=1)
    space = gym.spaces.Box(0, 255, (K, *FRAME), np.uint8)
    assert stacked_frames(cfg, space) is None
    cfg = config()
    assert stacked_frames(cfg, gym.spaces.Box(0, 255, (K + 1, *FRAME), np.uint8)) is None
    assert stacked_frames(cfg, gym.spaces.Box(0, 1, (K, *FRAME), np.float32)) is None
    spec = dqn_experience_spec(space, gym.spaces.Discrete(3), N_STEP, 64, 1 << 20)
    assert "obs" in spec.fields and "frame" not in spec.fields
