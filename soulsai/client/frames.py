"""Frame stacking on the client, and what a DQN client sends so that each frame crosses the
wire once (docs/protocol.md, "Frames").

The env yields single frames; the policy acts on the last `k` frames of its env copy, stacked
on a new first axis (oldest first). At an episode start the stack is the first frame `k`
times ("reset" padding, Gymnasium's FrameStackObservation default); the true final
observation's stack is the final frame pushed onto the last stack.

Instead of `obs` and `next_obs` stacks, a transition travels as one *frame row*: its own
(newest) frame, the action, n-step reward, `terminated` and `steps` k, plus what the node needs
to rebuild both stacks: a `stream` id per env copy (random, renewed when the client restarts
its episodes) and the row's `seq` number in that stream (0, 1, 2, ...), with `flags` bit 0 =
the frame starts an episode (padding) and bit 1 = the row is an episode's final observation
(a frame only, no transition; `steps` 0). A stream's rows are an episode's frames in order,
its final frame after its last step, then the next episode's; so the next observation of the
row at `seq` is the stack ending at the row `seq + steps`, and every stack is the row's frame
and the k - 1 rows before it, back to the episode's first.
"""

from __future__ import annotations

import numpy as np

from soulsai.client.nstep import NStepFold
from soulsai.errors import ConfigError
from soulsai.model.masks import pack_mask

FIRST = 1  # flags bit: the frame is its episode's first (the stack pads with it)
FINAL = 2  # flags bit: the frame is an episode's true final observation: no transition


class FrameStacker:
    """The last `k` frames of each env copy: `stacks[i]` is copy i's observation."""

    def __init__(self, num_envs: int, k: int, frame_shape: tuple[int, ...], dtype: np.dtype):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.stacks = np.zeros((num_envs, k, *frame_shape), dtype=dtype)

    def reset(self, i: int, frame: np.ndarray) -> None:
        """Copy i starts an episode with `frame`: the stack is that frame k times."""
        self.stacks[i] = frame

    def push(self, i: int, frame: np.ndarray) -> None:
        """Copy i's next frame: drop the oldest, append `frame`."""
        s = self.stacks[i]
        s[:-1] = s[1:]
        s[-1] = frame

    def pushed(self, i: int, frame: np.ndarray) -> np.ndarray:
        """Copy i's stack with `frame` pushed (a copy; the stacker is unchanged): the stack of
        a true final observation."""
        return np.concatenate([self.stacks[i][1:], frame[None]])

    def step(self, frames: np.ndarray, done: np.ndarray) -> None:
        """After a vector step: copies that ended (`done`) start over with their new first
        frame, the others push theirs (`frames`: (num_envs, *frame_shape))."""
        if done.any():
            for i in np.flatnonzero(done):
                self.reset(int(i), frames[i])
            going = ~done
            self.stacks[going, :-1] = self.stacks[going, 1:]
            self.stacks[going, -1] = frames[going]
        else:
            self.stacks[:, :-1] = self.stacks[:, 1:]
            self.stacks[:, -1] = frames


def new_streams(num_envs: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Random stream ids for `num_envs` env copies (int64 >= 0): unique across clients without
    asking anyone (collisions at 2**-62 per pair)."""
    rng = rng or np.random.default_rng()
    return rng.integers(0, np.iinfo(np.int64).max, num_envs, dtype=np.int64)


class FrameRows:
    """Turns the complete n-step transitions of a flush into frame rows, stream by stream.

    Tracks per env copy the next `seq` and whether the first row not yet sent starts an
    episode. The caller folds (`fold_nstep`) a block of rows whose frames are `frames[t]`
    (what the copy acted on at step t, (T + 1, copies, *F)), `final[t]` the true final frame
    where row t ended its episode, `done[t]` = terminated | truncated; then `moved(shift)`
    after it drops the oldest `shift` rows of the block.
    """

    def __init__(self, streams: np.ndarray) -> None:
        self.streams = np.asarray(streams, dtype=np.int64)
        self.seq = np.zeros(len(streams), dtype=np.int64)
        self.first0 = np.ones(len(streams), dtype=bool)  # row 0 of the block starts an episode

    def restart(self, streams: np.ndarray) -> None:
        """Every copy starts a new episode in a new stream (the client reset its env)."""
        self.__init__(streams)  # type: ignore[misc]

    def rows(
        self,
        f: NStepFold,
        frames: np.ndarray,
        final: np.ndarray,
        done: np.ndarray,
        action: np.ndarray,
        terminated: np.ndarray,
        next_mask: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """The wire fields of fold `f`'s transitions (plus the final frames of the episodes they
        end), rows ordered by copy, then time: `frame`, `flags`, `stream`, `seq`, `action`,
        `reward`, `terminated`, `steps`. `action` and `terminated` are per row of the block;
        `next_mask` (bool, per transition in fold order) becomes packed `next_mask` bits."""
        order = np.lexsort((f.row, f.copy))
        t, i, k = f.row[order], f.copy[order], f.steps[order]
        ends = done[t, i]  # the transition's own step ends the episode: its final frame follows
        m = len(t) + int(ends.sum())
        pos = np.arange(len(t)) + np.cumsum(ends) - ends  # each final row takes one slot
        fin = pos[ends] + 1
        first = np.where(t > 0, done[np.maximum(t - 1, 0), i], self.first0[i])
        copy = np.empty(m, dtype=np.int64)
        copy[pos], copy[fin] = i, i[ends]
        out: dict[str, np.ndarray] = {"frame": np.empty((m, *frames.shape[2:]), frames.dtype)}
        out["frame"][pos] = frames[t, i]
        out["frame"][fin] = final[t[ends], i[ends]]
        flags = np.zeros(m, dtype=np.uint8)
        flags[pos] = first * FIRST
        flags[fin] = FINAL
        out["flags"] = flags
        out["stream"] = self.streams[copy]
        starts = np.searchsorted(copy, copy)  # rows are grouped by copy: rank within the group
        out["seq"] = self.seq[copy] + np.arange(m) - starts
        np.add.at(self.seq, copy, 1)
        out["action"] = np.zeros(m, dtype=action.dtype)
        out["action"][pos] = action[t, i]
        out["reward"] = np.zeros(m, dtype=np.float32)
        out["reward"][pos] = f.reward[order]
        out["terminated"] = np.zeros(m, dtype=np.uint8)
        last = t + k - 1
        out["terminated"][pos] = f.ended[order] & terminated[last, i]
        out["steps"] = np.zeros(m, dtype=np.uint8)
        out["steps"][pos] = k
        if next_mask is not None:  # a final frame's row has no transition: all actions valid
            bits = np.ones((m, next_mask.shape[1]), dtype=bool)
            bits[pos] = next_mask[order]
            out["next_mask"] = pack_mask(bits)
        return out

    def rows_from_stacks(
        self,
        f: NStepFold,
        stacks: np.ndarray,
        final_stacks: np.ndarray,
        done: np.ndarray,
        action: np.ndarray,
        terminated: np.ndarray,
        next_mask: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """`rows` for an env whose observations are already stacked (k, *frame) by a wrapper:
        each row's newest frame goes out, after a check that the stacks are what the node will
        rebuild (the last k frames, the first one repeated at an episode start); anything else
        is a ConfigError: the learner would see other stacks than the policy acted on."""
        check_stacks(f, stacks, final_stacks, done, self.first0)
        return self.rows(
            f, stacks[:, :, -1], final_stacks[:, :, -1], done, action, terminated, next_mask
        )

    def moved(self, shift: int, done: np.ndarray) -> None:
        """The block (whose `done` rows were these) dropped its oldest `shift` rows: row
        `shift` is now row 0, and starts an episode where row `shift - 1` ended one."""
        if shift:
            self.first0 = done[shift - 1].copy()


def check_stacks(
    f: NStepFold,
    stacks: np.ndarray,
    final_stacks: np.ndarray,
    done: np.ndarray,
    first0: np.ndarray,
) -> None:
    """A ConfigError unless the stacked observations of fold `f`'s rows are the frame store's:
    an episode's first stack is its first frame k times, every later one the one before
    shifted by the new frame, and a final stack the last one shifted by the final frame."""
    t, i = f.row, f.copy
    if not len(t):
        return
    first = np.where(t > 0, done[np.maximum(t - 1, 0), i], first0[i])
    s = stacks[t, i]
    ok = np.ones(len(t), dtype=bool)
    if first.any():
        head = s[first]
        ok[first] = (head == head[:, -1:]).reshape(len(head), -1).all(axis=1)
    later = ~first & (t > 0)
    if later.any():
        before = stacks[t[later] - 1, i[later]]
        same = s[later][:, :-1] == before[:, 1:]
        ok[later] = same.reshape(int(later.sum()), -1).all(axis=1)
    ends = done[t, i]
    if ends.any():
        fin = final_stacks[t[ends], i[ends]]
        same = fin[:, :-1] == s[ends][:, 1:]
        ok[ends] &= same.reshape(int(ends.sum()), -1).all(axis=1)
    if not ok.all():
        raise ConfigError(
            "env.atari.frame_stack: the env's stacked observations are not the last k frames "
            "with the first frame repeated at an episode start, which the frame store rebuilds "
            "on the node (a stacking wrapper with zero padding?)"
        )
