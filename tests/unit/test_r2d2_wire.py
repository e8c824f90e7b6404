"""algo r2d2 from the client to the replay and back from a checkpoint: the actor's chunks
(episode ends, carried and stored states, the burn-in state, states kept on new weights), the
wire and the node's intake (stored states round trip), hostile chunks rejected and counted,
and the driver's checkpoint (chunks, links, states, priorities) resumed."""

from __future__ import annotations

import logging
import shutil
import threading
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

from soulsai.client.r2d2_actor import R2D2Actor
from soulsai.config import load_config
from soulsai.model.nets import cpu_state
from soulsai.model.numpy_r2d2 import NumpyRecurrentQ
from soulsai.model.obs import build_layout
from soulsai.training.algorithms.r2d2 import build_network
from soulsai.training.algorithms.r2d2_driver import R2D2Driver, check_chunks
from soulsai.training.checkpoint import load_checkpoint, save_checkpoint
from soulsai.training.intake import ClientNumbers, Intake
from soulsai.transport.envelope import encode_experience
from tests.data.driver_host import Host

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
OBS = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
ACT = gym.spaces.Discrete(3)
L, BURN = 4, 3


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cfg")
    shutil.copy(ROOT / "config" / "config_d.yaml", d / "config_d.yaml")
    return d


def make_cfg(config_dir, *sets: str):
    base = ["algo=r2d2", "dqn.hidden=[8]", "r2d2.core_size=5", f"r2d2.chunk={L}"]
    base += [f"r2d2.burn_in={BURN}", "dqn.n_step=2", "env.num_envs=2", "client.batch_size=1"]
    return load_config(config_dir, [*base, "dqn.buffer_size=400", *sets])


def weights(cfg, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    net = build_network(cfg, build_layout(OBS), 3)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.5)
    return cpu_state(net)


def drive(actor: R2D2Actor, steps: int, ends: dict[int, set[int]], swap_at: int = -1, cfg=None):
    """Run `steps` vector steps; copy i's episode ends (terminated) after its steps in
    ends[i] (global step numbers); obs = (step in episode / 100, episode / 100). Returns the
    messages and each copy's observations per episode."""
    n = len(actor.pos)
    rows = actor.rows
    t_ep, ep = np.zeros(n, int), np.zeros(n, int)
    seen: dict[tuple[int, int], list[np.ndarray]] = {}
    rows.leaves[""][0] = 0.0
    out = []
    for k in range(steps):
        if k == swap_at:  # new weights mid-episode
            out += actor.set_model(1, actor.make_policy(weights(cfg, 1)), {})
        actor.act(rows.obs_rows[0], k)
        for i in range(n):
            seen.setdefault((i, ep[i]), []).append(rows.leaves[""][0, i].copy())
            rows.reward[0, i] = 0.5 * i + 0.01 * t_ep[i]
            t_ep[i] += 1
            nxt = np.array([t_ep[i] / 100, ep[i] / 100], np.float32)
            if k in ends.get(i, ()):
                rows.terminated[0, i] = True
                rows.final_leaves[""][0, i] = nxt
                ep[i] += 1
                t_ep[i] = 0
                nxt = np.array([0.0, ep[i] / 100], np.float32)
            rows.leaves[""][1, i] = nxt
        out += actor.observe()
    return out, seen


def actor_for(cfg) -> R2D2Actor:
    actor = R2D2Actor(cfg, OBS, ACT, 0, np.random.default_rng(0))
    actor.set_model(0, actor.make_policy(weights(cfg)), {})
    return actor


def rows_of(messages) -> dict[str, np.ndarray]:
    return {k: np.concatenate([m[1][k] for m in messages]) for k in messages[0][1]}


def test_the_actor_sends_each_episode_once_in_chunks_with_the_states_it_carried(config_dir):
    cfg = make_cfg(config_dir)
    actor = actor_for(cfg)
    ends = {0: {5, 13}, 1: {9}}  # copy 0: episodes of 6 and 8 steps; copy 1: 10 steps
    messages, seen = drive(actor, 16, ends, swap_at=7, cfg=cfg)
    messages += actor.finish()  # the open episodes go out as truncated ends
    f = rows_of(messages)
    twin_0 = NumpyRecurrentQ(weights(cfg), cfg.dqn, cfg.r2d2, build_layout(OBS), 3)
    twin_1 = NumpyRecurrentQ(weights(cfg, 1), cfg.dqn, cfg.r2d2, build_layout(OBS), 3)
    by_stream: dict[int, list[int]] = {}
    for r in range(len(f["index"])):
        by_stream.setdefault(int(f["stream"][r]), []).append(r)
    assert len(by_stream) == 5  # copy 0: 3 episodes, copy 1: 2
    total = 0
    for rows in by_stream.values():
        rows.sort(key=lambda r: f["index"][r])
        assert [int(f["index"][r]) for r in rows] == list(range(len(rows)))
        assert all(f["length"][r] == L for r in rows[:-1]) and f["ended"][rows[-1]] == 1
        assert not f["ended"][rows[:-1]].any()
        obs = np.concatenate([f["obs"][r][: f["length"][r]] for r in rows])
        total += len(obs)
        # each step of the episode once, in order; the states as the client carried them
        match = [k for k, v in seen.items() if len(v) == len(obs) and np.allclose(v, obs)]
        assert len(match) == 1
        copy, episode = match[0]
        h = np.zeros((1, 10), np.float32)
        states = []
        for j, o in enumerate(obs):
            states.append(h.copy())
            global_step = j + sum(len(seen[(copy, e)]) for e in range(episode))
            twin = twin_0 if global_step < 7 else twin_1  # the weights changed, the state stays
            h = twin.step(o[None], h)[1]
        for c, r in enumerate(rows):
            np.testing.assert_allclose(f["state"][r], states[c * L][0], atol=1e-6)
            burn = states[c * L - BURN][0] if c else np.zeros(10)
            np.testing.assert_allclose(f["burn_state"][r], burn, atol=1e-6)
    assert total == 32


def test_chunks_round_trip_the_wire_and_intake_into_the_replay(config_dir):
    cfg = make_cfg(config_dir)
    actor = actor_for(cfg)
    messages, _ = drive(actor, 14, {0: {5}, 1: {9}})
    sent = rows_of(messages)
    host = driver_host(cfg)
    driver = R2D2Driver(host, OBS, ACT)
    intake = host_intake(host, driver)
    raws = [encode_experience("client-a", mid, fields) for mid, fields in messages]
    assert intake.handle_many(raws) == len(raws)
    assert not intake.rejected
    a = driver.buffer.arrays
    n = len(sent["index"])
    assert len(driver.buffer) == n and intake.env_steps == int(sent["length"].sum())
    order = np.lexsort((sent["index"], sent["stream"]))  # stored in stream order
    for name in ("obs", "next_obs", "action", "reward", "state", "burn_state", "index"):
        np.testing.assert_array_equal(a[name][:n], sent[name][order], err_msg=name)
    assert (a["prev"][:n] >= 0).sum() == n - 4  # all but the first of each of 4 episodes
    assert (a["client"][:n] == ClientNumbers.number("client-a")).all()
    # another client sending the next chunk of one of these streams is not linked to it
    tips = [
        r
        for r in range(n)
        if not sent["ended"][r]
        and sent["index"][r] == sent["index"][sent["stream"] == sent["stream"][r]].max()
    ]
    forged = {k: v[tips[:1]].copy() for k, v in sent.items()}
    forged["index"] += 1
    intake.handle_many([encode_experience("client-b", 1, forged)])
    assert len(driver.buffer) == n + 1 and a["prev"][n] == -1
    intake.handle_many([encode_experience("client-a", 1, forged)])  # from its client: linked
    assert len(driver.buffer) == n + 2 and a["prev"][n + 1] >= 0


def driver_host(cfg) -> Host:
    return Host(
        cfg=cfg,
        lock=threading.RLock(),
        data_ready=threading.Event(),
        accepted=0,
        model_id=1,
        clients=1,
        env_steps=0,
        log=logging.getLogger("test"),
        intake=SimpleNamespace(rejected=Counter(), drained_at=0.0, queued_steps=lambda: 0.0),
    )


def host_intake(host: Host, driver: R2D2Driver) -> Intake:
    intake = Intake(
        None,  # type: ignore[arg-type]  # handle_many never reads Redis
        driver.spec,
        None,
        lambda: host.model_id,
        10,
        16,
        threading.Event(),
        accept_rows=driver.accept_rows,
    )
    host.intake = intake
    return intake


def _bad(f: dict, what: str) -> None:
    if what == "short_not_ended":
        f["length"][0] = L - 1
    elif what == "terminated_inside":
        f["terminated"][0, 1] = 1
    elif what == "terminated_not_ended":
        f["terminated"][0, L - 1] = 1
    elif what == "first_with_state":
        f["index"][0] = 0
        f["state"][0, 2] = 0.5
    elif what == "state_out_of_range":
        f["state"][0, 0] = 2e4
    elif what == "state_nan":
        f["burn_state"][0, 0] = np.nan
    elif what == "length_zero":
        f["length"][0] = 0
    elif what == "length_over":
        f["length"][0] = L + 1
    elif what == "index_negative":
        f["index"][0] = -1
    elif what == "action_out_of_range":
        f["action"][0, 0] = 3
    elif what == "obs_shape":
        f["obs"] = f["obs"][:, :, :1].copy()
    elif what == "hidden_beyond_one":  # a core's h lies in (-1, 1); c may grow (LSTM [h, c])
        f["state"][0, 0] = 50.0
    elif what == "burn_hidden_beyond_one":
        f["burn_state"][0, 4] = -1.5


REASONS = {
    "short_not_ended": "bad_structure",
    "terminated_inside": "bad_structure",
    "terminated_not_ended": "bad_structure",
    "first_with_state": "bad_structure",
    "state_out_of_range": "out_of_range",
    "state_nan": "non_finite",
    "length_zero": "out_of_range",
    "length_over": "out_of_range",
    "index_negative": "out_of_range",
    "action_out_of_range": "out_of_range",
    "obs_shape": None,  # the decoder's own reason for a wrong shape
    "hidden_beyond_one": "bad_state",
    "burn_hidden_beyond_one": "bad_state",
}


@pytest.mark.parametrize("what", sorted(REASONS))
def test_hostile_chunks_are_rejected_and_counted(config_dir, what):
    cfg = make_cfg(config_dir)
    messages, _ = drive(actor_for(cfg), 12, {})
    good = rows_of(messages)
    later = np.flatnonzero(good["index"] > 0)[:2]  # two full chunks, not an episode's first
    good = {k: v[later] for k, v in good.items()}
    host = driver_host(cfg)
    driver = R2D2Driver(host, OBS, ACT)
    intake = host_intake(host, driver)
    bad = {k: v.copy() for k, v in good.items()}
    _bad(bad, what)
    intake.handle_many([encode_experience("c", 1, bad), encode_experience("c", 1, good)])
    assert sum(intake.rejected.values()) >= 1, intake.rejected
    if REASONS[what] is not None:
        assert intake.rejected[REASONS[what]] >= 1, intake.rejected
    stored = len(driver.buffer)
    assert stored in (
        2,
        3,
    )  # the good message always; the bad one's other chunk if checked per chunk
    assert host.accepted == int(good["length"].sum()) + (stored - 2) * L


def test_bad_mask_bits_are_rejected_and_counted(config_dir):
    cfg = make_cfg(config_dir, "env.action_mask=action_mask")
    actor = actor_for(cfg)
    actor.rows.mask[:] = True
    messages, _ = drive(actor, 8, {})
    f = rows_of(messages)
    assert f["mask"].shape[1:] == (L, 1) and f["next_mask"].shape[1:] == (1,)
    host = driver_host(cfg)
    driver = R2D2Driver(host, OBS, ACT)
    intake = host_intake(host, driver)
    bad = {k: v.copy() for k, v in f.items()}
    bad["mask"][0, 1] = 0  # no valid action at a valid step
    bad["next_mask"][1] = 0b11100001  # a padding bit set
    intake.handle_many([encode_experience("c", 1, bad)])
    assert intake.rejected["bad_mask"] == 2 and len(driver.buffer) == len(f["index"]) - 2


def test_the_driver_checkpoint_resumes_chunks_links_states_and_priorities(config_dir, tmp_path):
    cfg = make_cfg(config_dir, "dqn.prioritized=true")
    actor = actor_for(cfg)
    messages, _ = drive(actor, 30, {0: {5, 17}, 1: {9}})
    host = driver_host(cfg)
    driver = R2D2Driver(host, OBS, ACT)
    intake = host_intake(host, driver)
    intake.handle_many([encode_experience("client-a", mid, f) for mid, f in messages])
    for _ in range(3):
        driver.prioritized_update()
    parts, counters = driver.checkpoint(with_buffer=True)
    save_checkpoint(tmp_path / "ck", {**parts, "rng": parts["rng"]}, {"env_steps": 1})
    state, _ = load_checkpoint(tmp_path / "ck")
    back = R2D2Driver(driver_host(cfg), OBS, ACT)
    back.restore(state, counters)
    for name, a in driver.buffer.arrays.items():
        np.testing.assert_array_equal(back.buffer.arrays[name], a, err_msg=name)
    assert dict(back.buffer.streams) == dict(driver.buffer.streams)
    assert back.per is not None and driver.per is not None
    np.testing.assert_array_equal(back.per.state_dict()["tree.priorities"],
                                  driver.per.state_dict()["tree.priorities"])  # fmt: skip
    assert len(set(driver.per.state_dict()["tree.priorities"].tolist())) > 2  # updated ones
    slots = np.array([0, 3, 5])
    one, two = driver.buffer.batch_at(slots), back.buffer.batch_at(slots)
    np.testing.assert_array_equal(one.burn_state, two.burn_state)
    np.testing.assert_array_equal(one.obs[""], two.obs[""])


def test_dict_observations_travel_per_leaf_and_train(config_dir):
    space = gym.spaces.Dict(
        {"pos": gym.spaces.Box(-1.0, 1.0, (2,), np.float32), "phase": gym.spaces.Discrete(3)}
    )
    cfg = make_cfg(config_dir, "dqn.batch_size=8", "dqn.learning_starts=0")
    host = driver_host(cfg)
    driver = R2D2Driver(host, space, ACT)
    assert {"obs.pos", "obs.phase", "next_obs.pos", "next_obs.phase"} <= set(driver.spec.fields)
    rng = np.random.default_rng(0)
    n = 3
    f = {name: np.zeros((n, *fs.shape), fs.dtype) for name, fs in driver.spec.fields.items()}
    f["obs.pos"][:] = rng.uniform(-1, 1, f["obs.pos"].shape)
    f["obs.phase"][:] = rng.integers(0, 3, f["obs.phase"].shape)
    f["index"][:] = [0, 1, 2]
    f["length"][:] = [L, L, 2]
    f["ended"][2] = 1
    f["state"][1:] = f["burn_state"][1:] = 0.1
    intake = host_intake(host, driver)
    assert intake.handle_many([encode_experience("c", 1, f)]) == 1 and not intake.rejected
    assert driver.buffer.arrays["prev"][:3].tolist() == [-1, 0, 1]
    _, batch = driver.buffer.sample(4)
    assert set(batch.obs) == {"pos", "phase"}
    info = driver.learner.update(batch)
    assert np.isfinite(info["loss"])


def test_an_lstm_cell_state_beyond_one_is_kept_its_h_is_not(config_dir):
    """[h, c]: c grows by up to 1 a step (bounded by the decoder), h never leaves (-1, 1)."""
    cfg = make_cfg(config_dir)
    messages, _ = drive(actor_for(cfg), 12, {})
    f = rows_of(messages)
    later = np.flatnonzero(f["index"] > 0)[:2]
    f = {k: v[later].copy() for k, v in f.items()}
    f["state"][0, 5:] = 40.0  # c
    f["burn_state"][1, :5] = 0.999  # h, within
    good, bad = check_chunks(f, L, 0, cfg.r2d2.core_size)
    assert good.all() and bad["bad_state"] == 0
    f["state"][1, 4] = 1.01
    good, bad = check_chunks(f, L, 0, cfg.r2d2.core_size)
    assert good.tolist() == [True, False] and bad["bad_state"] == 1


def test_stream_ids_cannot_be_predicted_from_the_seed(config_dir):
    """The actor's rng is seeded from the config's seed and the client's index, both known
    to other clients: stream ids drawn from it could be forged to splice into an episode."""
    cfg = make_cfg(config_dir)
    one = R2D2Actor(cfg, OBS, ACT, 0, np.random.default_rng(0))
    two = R2D2Actor(cfg, OBS, ACT, 0, np.random.default_rng(0))
    assert not set(one.stream.tolist()) & set(two.stream.tolist())
    assert not set(one._streams(4).tolist()) & set(two._streams(4).tolist())


def test_checking_mask_bits_does_not_unpack_them():
    """A pop of chunks with many actions: the mask checks read the packed bytes (a valid
    action is a set bit, padding bits are checked apart), not 8x their size in bools."""
    import tracemalloc

    n, chunk, n_mask = 256, 64, 512
    f = {
        "length": np.full(n, chunk, np.int16),
        "ended": np.zeros(n, np.uint8),
        "terminated": np.zeros((n, chunk), np.uint8),
        "index": np.ones(n, np.int64),
        "state": np.zeros((n, 4), np.float32),
        "burn_state": np.zeros((n, 4), np.float32),
        "mask": np.full((n, chunk, n_mask // 8), 0b0100_0000, np.uint8),  # 1 MiB packed
        "next_mask": np.full((n, n_mask // 8), 1, np.uint8),
    }
    f["mask"][3, 5] = 0  # no valid action at a valid step
    f["mask"][4, 7, :-1] = 0  # only the last action valid: fine
    f["mask"][4, 7, -1] = 1
    tracemalloc.start()
    good, bad = check_chunks(f, chunk, n_mask)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert bad["bad_mask"] == 1 and np.flatnonzero(~good).tolist() == [3]
    assert peak < 4 << 20, peak  # unpacked: 8 MiB of bools at least
