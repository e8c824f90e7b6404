"""algo r2d2's sequence replay: chunks linked to their predecessor and successor by
(client, stream, number), unlinked when overwritten, a bounded table of streams, sequences
without a predecessor starting from their own stored state, and its state_dict round trip."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from soulsai.model.obs import build_layout
from soulsai.training.sequence_replay import SequenceReplay

L, N_STEP, BURN, S = 4, 2, 2, 6
LAYOUT = build_layout(gym.spaces.Box(-1.0, 1.0, (2,), np.float32))


def chunks(stream: int, indices: list[int], lengths: list[int] | None = None, ended=None):
    n = len(indices)
    lengths = lengths or [L] * n
    ended = ended or [0] * n
    rng = np.random.default_rng(stream)
    f = {
        "obs": rng.uniform(-1, 1, (n, L, 2)).astype(np.float32),
        "next_obs": rng.uniform(-1, 1, (n, 2)).astype(np.float32),
        "action": rng.integers(0, 3, (n, L)),
        "reward": rng.normal(size=(n, L)).astype(np.float32),
        "terminated": np.zeros((n, L), np.uint8),
        "state": rng.uniform(-1, 1, (n, S)).astype(np.float32),
        "burn_state": rng.uniform(-1, 1, (n, S)).astype(np.float32),
        "stream": np.full(n, stream, np.int64),
        "index": np.array(indices, np.int64),
        "length": np.array(lengths, np.int16),
        "ended": np.array(ended, np.uint8),
    }
    return f


def replay(capacity: int = 8) -> SequenceReplay:
    return SequenceReplay(capacity, L, N_STEP, BURN, LAYOUT, S, 3, seed=0)


def test_chunks_link_to_their_neighbours_by_client_stream_and_number():
    r = replay()
    r.add(chunks(1, [0, 1]), np.array([7, 7]))
    r.add(chunks(1, [0]), np.array([8]))  # another client, same stream id: not linked
    r.add(chunks(2, [0, 2]), np.array([7, 7]))  # a gap: chunk 1 of stream 2 was lost
    r.add(chunks(1, [2], [3], [1]), np.array([7]))  # the episode's short last chunk
    r.add(chunks(1, [3]), np.array([7]))  # after the episode's end: no link
    a = r.arrays
    assert a["prev"][:7].tolist() == [-1, 0, -1, -1, -1, 1, -1]
    assert a["next"][:7].tolist() == [1, 5, -1, -1, -1, -1, -1]
    # the tips: (7, 1) is the stray chunk 3 (the ended chunk forgot the stream first)
    assert dict(r.streams) == {(8, 1): 2, (7, 2): 4, (7, 1): 6}


def test_overwriting_a_slot_unlinks_it_from_both_neighbours():
    r = replay(capacity=3)
    r.add(chunks(1, [0, 1, 2]), np.zeros(3, np.int64))
    assert r.arrays["prev"].tolist() == [-1, 0, 1] and r.arrays["next"].tolist() == [1, 2, -1]
    r.add(chunks(9, [0]), np.zeros(1, np.int64))  # overwrites chunk 0 of stream 1
    assert r.arrays["prev"].tolist() == [-1, -1, 1] and r.arrays["next"].tolist() == [-1, 2, -1]
    r.add(chunks(1, [3]), np.zeros(1, np.int64))  # slot 1 (chunk 1) goes; 3 follows 2
    assert r.arrays["prev"].tolist() == [-1, 2, -1] and r.arrays["next"].tolist() == [-1, -1, 1]
    assert r.arrays["index"].tolist() == [0, 3, 2]
    r.add(chunks(1, [4]), np.zeros(1, np.int64))  # slot 2 (chunk 2) goes; 4 follows 3
    assert r.arrays["prev"].tolist() == [-1, -1, 1] and r.arrays["next"].tolist() == [-1, 2, -1]


def test_a_churn_of_stream_ids_keeps_the_stream_table_bounded():
    r = replay(capacity=8)
    for stream in range(500):
        r.add(chunks(stream, [0]), np.array([stream % 3]))
    assert len(r.streams) <= r.capacity


def test_without_a_predecessor_a_sequence_starts_from_its_own_state_and_has_no_burn_in():
    r = replay()
    r.add(chunks(3, [0, 1]), np.zeros(2, np.int64))
    r.add(chunks(4, [5]), np.zeros(1, np.int64))  # its predecessor never arrived
    batch = r.batch_at(np.array([1, 2]))
    assert batch.has_burn.tolist() == [True, False]
    np.testing.assert_array_equal(batch.burn_obs[""][0], r.arrays["obs"][0, L - BURN :])
    np.testing.assert_array_equal(batch.burn_obs[""][1], 0)
    np.testing.assert_array_equal(batch.state, r.arrays["state"][[1, 2]])
    np.testing.assert_array_equal(batch.burn_state, r.arrays["burn_state"][[1, 2]])
    # no successor: the observation after the chunk is its own next_obs, at `length`
    assert batch.avail.tolist() == [L, L]
    np.testing.assert_array_equal(batch.obs[""][:, L], r.arrays["next_obs"][[1, 2]])


def test_a_successor_shorter_than_n_minus_one_steps_ends_at_its_next_obs():
    r = SequenceReplay(8, L, 4, BURN, LAYOUT, S, 3)
    r.add(chunks(1, [0, 1], [L, 1], [0, 1]), np.zeros(2, np.int64))
    batch = r.batch_at(np.array([0]))
    assert batch.avail.tolist() == [L + 1]
    np.testing.assert_array_equal(batch.obs[""][0, L], r.arrays["obs"][1, 0])
    np.testing.assert_array_equal(batch.obs[""][0, L + 1], r.arrays["next_obs"][1])


def test_state_dict_round_trip_keeps_chunks_links_states_and_stream_tips():
    r = replay(capacity=5)
    r.add(chunks(1, [0, 1, 2]), np.array([4, 4, 4]))
    r.add(chunks(2, [0, 1, 2, 3]), np.array([4, 4, 4, 4]))  # wraps
    r.sample(3)
    back = replay(capacity=5)
    back.load_state_dict(r.state_dict())
    for name, a in r.arrays.items():
        np.testing.assert_array_equal(back.arrays[name], a, err_msg=name)
    assert (back.pos, back.size, back.total_added) == (r.pos, r.size, r.total_added)
    assert dict(back.streams) == dict(r.streams)
    np.testing.assert_array_equal(back.sample(4)[0], r.sample(4)[0])
    back.add(chunks(2, [4]), np.array([4]))  # the stream goes on after the resume
    assert back.arrays["prev"][back.pos - 1] >= 0
    with pytest.raises(ValueError, match="must not change"):
        replay(capacity=6).load_state_dict(r.state_dict())


def _reference_tail(r: SequenceReplay, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One sequence's positions from L on, gathered step by step (obs (n, 2), reward and
    terminated (n - 1,), avail), as the module docstring describes them."""
    a, L_, n = r.arrays, r.chunk, r.n_step
    obs, reward, term = np.zeros((n, 2), np.float32), np.zeros(n - 1), np.zeros(n - 1, bool)
    s = int(a["next"][j])
    if s < 0:
        return obs, reward, term, int(a["length"][j])
    e = min(n - 1, int(a["length"][s]))
    obs[:e], reward[:e], term[:e] = a["obs"][s, :e], a["reward"][s, :e], a["terminated"][s, :e]
    obs[e] = a["next_obs"][s] if e >= a["length"][s] else a["obs"][s, e]
    return obs, reward, term, L_ + e


@pytest.mark.parametrize("n_step", [1, 2, 4])
def test_batched_sequences_equal_a_step_by_step_gather(n_step):
    """batch_at gathers all sequences at once; here each is gathered on its own from the
    links (successors full, short, ended, terminated, missing; the ring wrapped)."""
    rng = np.random.default_rng(n_step)
    r = SequenceReplay(12, L, n_step, BURN, LAYOUT, S, 3, seed=0)
    for k in range(12):
        ids = list(range(int(rng.integers(0, 3)), 4))
        lengths = [L] * len(ids)
        lengths[-1] = int(rng.integers(1, L + 1))
        ended = [0] * len(ids)
        ended[-1] = int(lengths[-1] < L or rng.random() < 0.5)
        f = chunks(100 + k, ids, lengths, ended)
        if ended[-1] and rng.random() < 0.5:
            f["terminated"][-1, lengths[-1] - 1] = 1
        r.add(f, np.zeros(len(ids), np.int64))
    slots = np.arange(r.size)
    batch = r.batch_at(slots)
    a = r.arrays
    assert (a["next"][slots] >= 0).sum() > 3
    for i, j in enumerate(slots.tolist()):
        obs, reward, term, avail = _reference_tail(r, j)
        assert batch.avail[i] == avail
        k = int(a["length"][j])
        np.testing.assert_array_equal(batch.obs[""][i, :k], a["obs"][j, :k])
        np.testing.assert_array_equal(batch.reward[i, :L], a["reward"][j])
        np.testing.assert_array_equal(batch.terminated[i, :L], a["terminated"][j] != 0)
        if avail < L:  # no successor: j's next_obs at its length, zeros after
            np.testing.assert_array_equal(batch.obs[""][i, avail], a["next_obs"][j])
            np.testing.assert_array_equal(batch.obs[""][i, L:], 0)
        elif a["next"][j] < 0:
            np.testing.assert_array_equal(batch.obs[""][i, L], a["next_obs"][j])
            np.testing.assert_array_equal(batch.obs[""][i, L + 1 :], 0)
        else:
            np.testing.assert_array_equal(batch.obs[""][i, L:], obs)
        np.testing.assert_array_equal(batch.reward[i, L:], reward)
        np.testing.assert_array_equal(batch.terminated[i, L:], term)


def test_batched_masks_follow_the_sequence():
    """With masks: each position's valid actions, the successor's after the chunk and the
    next_obs mask at `avail`; positions after it allow every action."""
    r = SequenceReplay(8, L, 3, BURN, LAYOUT, S, 3, n_mask=3, seed=0)
    f = chunks(1, [0, 1], [L, 1], [0, 1])
    f["mask"] = np.random.default_rng(0).choice([0b1000_0000, 0b0110_0000], (2, L, 1))
    f["mask"] = f["mask"].astype(np.uint8)
    f["next_mask"] = np.array([[0b0010_0000], [0b0100_0000]], np.uint8)
    r.add(f, np.zeros(2, np.int64))
    batch = r.batch_at(np.array([0, 1]))
    unpack = lambda bits: np.unpackbits(bits, axis=-1)[..., :3].astype(bool)  # noqa: E731
    assert batch.avail.tolist() == [L + 1, 1]
    np.testing.assert_array_equal(batch.mask[0, :L], unpack(f["mask"][0]))
    np.testing.assert_array_equal(batch.mask[0, L], unpack(f["mask"][1, 0]))
    np.testing.assert_array_equal(batch.mask[0, L + 1], unpack(f["next_mask"][1]))
    np.testing.assert_array_equal(batch.mask[0, L + 2 :], True)
    np.testing.assert_array_equal(batch.mask[1, 0], unpack(f["mask"][1, 0]))
    np.testing.assert_array_equal(batch.mask[1, 1], unpack(f["next_mask"][1]))
