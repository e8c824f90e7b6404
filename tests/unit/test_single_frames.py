"""Single-frame image observations (no stack: k = 1, the frame is the observation, as SoulsGym's
`SoulsGymIudexImg-v0` and MinAtar) as frame rows: which observations take them
(`specs.frame_rows`), the client's rows against the obs + next_obs transitions it sent before
(same n-step pairs and episode ends, each frame once), the node's driver, its replay bytes per
transition (one frame, not two) and checkpoints across the switch."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from soulsai.client.dqn_actor import DQNActor
from soulsai.config import load_config
from soulsai.config.schema import AtariConfig
from soulsai.model.specs import dqn_frame_spec, frame_rows
from soulsai.training.algorithms.dqn_driver import DQNDriver
from soulsai.training.checkpoint import load_checkpoint, save_checkpoint
from soulsai.training.frame_replay import FrameReplay
from soulsai.training.replay import ReplayBuffer
from soulsai.transport.batch import LayoutCache, decode_experience_rows
from soulsai.transport.envelope import encode_experience
from tests.data.driver_host import dqn_host

ROOT = Path(__file__).resolve().parents[2]
FRAME = (12, 10, 3)  # an image (both sides >= 8), channels last
IUDEX = gym.spaces.Box(0, 255, (90, 160, 3), np.uint8)  # SoulsGymIudexImg-v0's frames
N_STEP, GAMMA = 3, 0.9
ACT = gym.spaces.Discrete(3)
BASE = [
    "algo=dqn", "dqn.throttle=false", "dqn.learning_starts=0", "dqn.batch_size=16",
    "dqn.buffer_size=500", "dqn.replay_ratio=4", "dqn.hidden=[8]", f"dqn.n_step={N_STEP}",
    f"dqn.gamma={GAMMA}", "env.image_encoder=impala", "env.impala_channels=[4]",
    "env.image_features=8", "dqn.update_samples=1000000", "env.num_envs=2",
    "client.batch_size=8", "client.flush_interval=60",
]  # fmt: skip


def config(*sets: str) -> Any:
    return load_config(ROOT / "config", [*BASE, *sets])


class Frames(gym.Env):
    """Frames whose first two bytes are a unique id; episodes end at random (either way)."""

    observation_space = gym.spaces.Box(0, 255, FRAME, np.uint8)
    action_space = ACT

    def __init__(self, seed: int, ids: list[int]) -> None:
        self.rng, self.ids = np.random.default_rng(seed), ids

    def _frame(self) -> np.ndarray:
        f = self.rng.integers(0, 256, FRAME, dtype=np.uint8)
        self.ids[0] += 1
        f.flat[0], f.flat[1] = divmod(self.ids[0], 256)
        return f

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        return self._frame(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        end = self.rng.random()
        return self._frame(), float(self.rng.normal()), end < 0.06, 0.06 <= end < 0.1, {}


def fid(frames: np.ndarray) -> np.ndarray:
    """The id of each frame of `frames` (..., *FRAME)."""
    flat = frames.reshape(*frames.shape[: frames.ndim - len(FRAME)], -1).astype(np.int64)
    return flat[..., 0] * 256 + flat[..., 1]


class _Zero:
    def act(self, obs, epsilon, rng, out=None, mask=None):
        actions = np.zeros(len(obs), np.int64)
        if out is not None:
            out[...] = actions
        return actions


def run(cfg: Any, steps: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """The sampler's loop over two Frames copies (LocalVectorEnv's stepping): the messages."""
    ids = [0]
    envs = [Frames(seed + i, ids) for i in range(2)]
    actor = DQNActor(cfg, Frames.observation_space, ACT, 0, np.random.default_rng(seed))
    actor.set_model(0, _Zero(), {})
    rows, messages = actor.rows, []
    for i, env in enumerate(envs):
        rows.obs[0, i] = env.reset()[0]
    for _ in range(steps):
        t = rows.t
        actions = actor.act(rows.obs[t], 0)
        for i, env in enumerate(envs):
            obs, reward, term, trunc, _ = env.step(actions[i])
            rows.reward[t, i] = reward
            if term or trunc:
                rows.terminated[t, i], rows.truncated[t, i] = term, trunc
                rows.final_obs[t, i] = obs
                obs, _ = env.reset()
            rows.obs[t + 1, i] = obs
        messages += actor.observe()
    messages += actor.finish()
    return [f for _, f in messages]


def through_the_wire(messages: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The messages lz4-encoded and decoded by the node's spec for these frames."""
    spec = dqn_frame_spec(Frames.observation_space, ACT, N_STEP, 4096, 1 << 20)
    raws = [encode_experience("c", 0, f, "lz4", {"frame"}) for f in messages]
    rows = decode_experience_rows(raws, spec, LayoutCache())
    assert not rows.errors
    return rows.fields


def pairs_of_store(store: FrameReplay) -> set[tuple]:
    """(obs id, next_obs id, reward, discount, action) of every transition in the store."""
    serials, obs, nxt = store.complete()
    o, x = store.observations(obs), store.observations(nxt)
    pos = serials % store.capacity
    a = store.arrays
    return {
        (int(fid(o[j])), int(fid(x[j])), round(float(a["reward"][pos[j]]), 4),
         round(float(a["discount"][pos[j]]), 4), int(a["action"][pos[j]]))
        for j in range(len(serials))
    }  # fmt: skip


def test_which_observations_travel_as_single_frames() -> None:
    cfg = config()
    assert frame_rows(cfg, IUDEX) == (IUDEX, 1)
    minatar = gym.spaces.Box(0, 255, (10, 10, 4), np.uint8)
    assert frame_rows(config("env.image_encoder=minatar"), minatar) == (minatar, 1)
    assert frame_rows(config("env.frame_rows=off"), IUDEX) is None
    assert frame_rows(config("env.image_encoder=flatten"), IUDEX) is None  # no image leaf
    # the frame store serves neither: such runs keep obs + next_obs
    assert frame_rows(config("dqn.prioritized=true"), IUDEX) is None
    assert frame_rows(config("dqn.normalize_obs=true"), IUDEX) is None
    assert frame_rows(cfg, gym.spaces.Box(0, 1, (90, 160, 3), np.float32)) is None
    assert frame_rows(cfg, gym.spaces.Box(0, 255, (6, 5), np.uint8)) is None  # too small
    assert frame_rows(cfg, gym.spaces.Dict({"screen": IUDEX})) is None  # out of scope
    cfg.env.atari = AtariConfig(frame_stack=4)  # today's stacked frames are still frame rows
    stacked = frame_rows(cfg, gym.spaces.Box(0, 255, (4, 84, 84), np.uint8))
    assert stacked is not None and stacked[0].shape == (84, 84) and stacked[1] == 4
    off = config("env.frame_rows=off")
    off.env.atari = AtariConfig(frame_stack=4)  # whole stacks in obs and next_obs
    assert frame_rows(off, gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)) is None


def test_frame_rows_carry_the_same_nstep_pairs_as_obs_and_next_obs_with_each_frame_once() -> None:
    """The same env run, sent both ways: frame rows (each frame once, no obs/next_obs field)
    rebuild on the node exactly the transitions that obs + next_obs carried, across
    terminations, truncations and flushes (but for the last n of each env copy when the
    client stops: their next frames would go with the next flush's rows)."""
    rows = run(config(), 400)
    assert all("frame" in m and "obs" not in m and "next_obs" not in m for m in rows)
    f = through_the_wire(rows)
    sent = fid(f["frame"])
    assert len(sent) == len(set(sent.tolist()))  # each frame crossed the wire once
    store = FrameReplay(5000, FRAME, 1, ACT.n, seed=0)
    discount = (GAMMA ** f["steps"].astype(np.float64) * (1 - f["terminated"])).astype(np.float32)
    store.add_rows(
        np.zeros(len(sent), np.int64), f["stream"], f["seq"], f["flags"], f["frame"],
        f["action"], f["reward"], f["steps"], discount,
    )  # fmt: skip
    pairs = run(config("env.frame_rows=off"), 400)
    assert all("obs" in m and "next_obs" in m and "frame" not in m for m in pairs)
    want = set()
    for m in pairs:
        disc = GAMMA ** m["steps"].astype(np.float64) * (1 - m["terminated"])
        want |= {
            (int(o), int(x), round(float(r), 4), round(float(d), 4), int(a))
            for o, x, r, d, a in zip(
                fid(m["obs"]), fid(m["next_obs"]), m["reward"], disc, m["action"], strict=True
            )
        }
    assert len(want) > 700
    # but the last few of each copy: their next frames lead rows whose own n-step transitions
    # are not complete yet, which the next flush would send (the client stopped here; the
    # stacked frames' rows are the same)
    tail = {p for p in want if p[1] not in set(sent.tolist())}
    assert len(tail) <= 2 * N_STEP
    assert pairs_of_store(store) == want - tail
    # the pairs path sends every frame twice (obs, then next_obs), frame rows once
    frames_pairs = sum(2 * len(m["obs"]) for m in pairs)
    assert len(sent) < 0.6 * frames_pairs


def make_driver(*sets: str, space: gym.spaces.Box = IUDEX) -> DQNDriver:
    return DQNDriver(dqn_host(config(*sets)), space, ACT)


def test_the_driver_keeps_single_frames_once_and_learns_on_them() -> None:
    driver = make_driver(space=Frames.observation_space)
    assert isinstance(driver.buffer, FrameReplay) and driver.buffer.k == 1
    assert "frame" in driver.spec.fields and "obs" not in driver.spec.fields
    for f in run(config(), 200):
        driver.accept_rows(f, np.zeros(len(f["seq"]), np.int64))
        driver.step()
    assert len(driver.buffer) > 300 and driver.learner.updates > 0
    assert np.isfinite(driver.last_info["loss"])
    batch = driver.buffer.sample(4)  # the env's observation shape, uint8, as the pairs' replay
    assert tuple(batch.obs.shape) == tuple(batch.next_obs.shape) == (4, *FRAME)
    assert str(batch.obs.dtype) == "torch.uint8"


def test_replay_bytes_per_transition_of_a_90x160x3_frame_are_about_one_frame() -> None:
    frame = 90 * 160 * 3
    rows = make_driver("dqn.buffer_size=1000")
    pairs = make_driver("dqn.buffer_size=1000", "env.frame_rows=off")
    assert isinstance(rows.buffer, FrameReplay) and isinstance(pairs.buffer, ReplayBuffer)
    assert rows.buffer.nbytes() / 1000 <= 1.001 * frame
    assert sum(a.nbytes for a in pairs.buffer.arrays.values()) / 1000 >= 2 * frame


def test_checkpoints_resume_across_the_switch(tmp_path: Path, caplog) -> None:
    """A frame store's checkpoint resumes into a frame store (same transitions); obs + next_obs
    pairs (a checkpoint from before frame rows) resume into one empty, and frame rows into a
    run with env.frame_rows off empty too, each with a warning instead of an error."""
    driver = make_driver(space=Frames.observation_space)
    for f in run(config(), 120):
        driver.accept_rows(f, np.zeros(len(f["seq"]), np.int64))
    assert isinstance(driver.buffer, FrameReplay)
    parts, counters = driver.checkpoint(True)
    save_checkpoint(tmp_path / "rows", {"learner": driver.learner.state_dict(), **parts}, counters)
    state, summary = load_checkpoint(tmp_path / "rows")
    back = make_driver(space=Frames.observation_space)
    back.restore(state, summary)
    assert isinstance(back.buffer, FrameReplay)
    assert pairs_of_store(back.buffer) == pairs_of_store(driver.buffer)
    off = make_driver("env.frame_rows=off", space=Frames.observation_space)
    with caplog.at_level(logging.WARNING):
        off.restore(state, summary)
    assert len(off.buffer) == 0 and "holds frame rows" in caplog.text

    old = make_driver("env.frame_rows=off", space=Frames.observation_space)
    for f in run(config("env.frame_rows=off"), 40):
        old.accept_rows(f, np.zeros(len(f["obs"]), np.int64))
    assert len(old.buffer) > 0
    parts, counters = old.checkpoint(True)
    save_checkpoint(tmp_path / "pairs", {"learner": old.learner.state_dict(), **parts}, counters)
    state, summary = load_checkpoint(tmp_path / "pairs")
    caplog.clear()
    new = make_driver(space=Frames.observation_space)
    with caplog.at_level(logging.WARNING):
        new.restore(state, summary)
    assert len(new.buffer) == 0 and "observation pairs" in caplog.text


@pytest.mark.parametrize("key", ["dqn.prioritized", "dqn.normalize_obs"])
def test_options_the_frame_store_cannot_serve_keep_obs_and_next_obs(key: str) -> None:
    driver = make_driver(f"{key}=true")
    assert isinstance(driver.buffer, ReplayBuffer) and "next_obs" in driver.spec.fields
