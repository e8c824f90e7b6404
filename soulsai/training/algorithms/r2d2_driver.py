"""algo r2d2 inside the node shell: intake -> sequence replay -> recurrent learner.

Asynchronous like DQN (soulsai.training.algorithms.dqn_driver): samples are accepted when
their model id lags by at most `dqn.max_model_delay`, the learner owes updates by the replay
ratio and the clients are paused while it owes `max_update_debt`. A message row is one chunk
(soulsai.model.r2d2_spec); the decoder checks dtypes, shapes and bounds, `check_chunks` the
structure, and a bad chunk is dropped and counted (`bad_structure`, `bad_state`,
`bad_mask`), never fatal. Chunks are stored in a `SequenceReplay` of
`dqn.buffer_size / r2d2.chunk` slots, keyed by the sending client's interned id and the
chunk's stream. A gradient step takes
`round(dqn.batch_size / r2d2.chunk)` sequences (at least 1), so `dqn.batch_size` and
`dqn.replay_ratio` keep their meaning in env steps. With `dqn.prioritized` the sum-tree
sampler (soulsai.training.prioritized) holds one priority per chunk slot.

The intake counts one env step per message row; the driver adds the rest of each accepted
chunk's steps to it (chunks of a stale model count one step each).
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from soulsai.errors import CheckpointError, ConfigError
from soulsai.logs import RateLimitedLog
from soulsai.model.cores import state_size
from soulsai.model.obs import env_layout
from soulsai.model.obs_wire import field_name
from soulsai.model.r2d2_spec import r2d2_experience_spec
from soulsai.model.schedules import epsilon
from soulsai.training.algorithms.dqn_replay import restore_priorities, still_there
from soulsai.training.algorithms.r2d2 import R2D2Learner
from soulsai.training.driver import Host, IntakeHooks
from soulsai.training.prioritized import PrioritizedSampler
from soulsai.training.ratio import PauseGate, ReplayRatio
from soulsai.training.sequence_replay import SequenceReplay
from soulsai.training.shares import ClientShares

H_BOUND = 1.0 + 1e-3  # a core's h lies in (-1, 1); the margin covers float rounding


def check_chunks(
    f: dict[str, np.ndarray], chunk: int, n_mask: int, hidden: int = 0
) -> tuple[np.ndarray, dict[str, int]]:
    """Which chunk rows are well formed (bool (N,)) and the count of bad ones per reason.

    bad_structure: a short chunk that does not end its episode; a termination anywhere but at
    the last valid step, or there without `ended`; a first chunk (index 0) whose states are
    not zero. bad_state: the h part (the first `hidden` floats) of `state` or `burn_state`
    beyond +-1, which no core produces (the decoder's +-STATE_BOUND is for an LSTM's c; a GRU
    carries h from step to step, so a hostile h of 1e4 would reach the Q-values).
    bad_mask: padding bits set, or a valid step (or the next observation, unless the episode
    terminated) without a valid action. Steps from `length` on are padding that nothing reads
    (bounded by the decoder like the rest)."""
    length = f["length"].astype(np.int64)
    ended = f["ended"].astype(bool)
    term = f["terminated"].astype(bool)
    n = len(length)
    last = np.zeros((n, chunk), bool)
    last[np.arange(n), length - 1] = True
    term_last = term[np.arange(n), length - 1]
    structure = (length < chunk) & ~ended
    structure |= (term & ~last).any(axis=1)
    structure |= term_last & ~ended
    first = f["index"] == 0
    structure |= first & (f["state"].any(axis=1) | f["burn_state"].any(axis=1))
    bad = {"bad_structure": int(structure.sum())}
    good = ~structure
    if hidden:
        h = np.maximum(np.abs(f["state"][:, :hidden]), np.abs(f["burn_state"][:, :hidden]))
        wrong = (h.max(axis=1) > H_BOUND) & good
        bad["bad_state"] = int(wrong.sum())
        good &= ~wrong
    if n_mask:
        # on the packed bytes (not 8x their size in bools): a step allows an action where a
        # byte is non-zero; a set padding bit makes the chunk bad anyway (below)
        bits = f["mask"]
        pad = 8 * bits.shape[2] - n_mask
        steps = np.arange(chunk)[None] < length[:, None]
        wrong = (~bits.any(axis=2) & steps).any(axis=1)
        wrong |= ~f["next_mask"].any(axis=1) & ~term_last
        if pad:
            low = (1 << pad) - 1
            wrong |= ((bits[:, :, -1] & low) != 0).any(axis=1)
            wrong |= (f["next_mask"][:, -1] & low) != 0
        wrong &= good
        bad["bad_mask"] = int(wrong.sum())
        good &= ~wrong
    return good, bad


class R2D2Driver:
    metrics = {
        "accepted": "env steps accepted into the sequence replay",
        "buffer": "chunks in the sequence replay",
        "loss": "last TD loss",
        "q_mean": "mean Q value of the last update's sequences",
        "epsilon": "exploration rate now (the schedule's, or the ladder's highest)",
        "per_beta": "prioritized replay's importance-sampling exponent now",
        "nonfinite_updates": "gradient steps and normalizer merges skipped: NaN or inf",
    }
    rates: tuple[str, ...] = ("samples", "updates")
    progress = (
        "env_steps={env_steps} accepted={accepted} updates={updates} model={model_id} "
        "chunks={buffer} clients={clients} samples/s={samples_per_s} "
        "updates/s={updates_per_s} loss={loss} rejected={rejected}"
    )

    def __init__(self, host: Host, obs_space: gym.Space, act_space: gym.Space) -> None:
        cfg = self.cfg = host.cfg
        d, r = cfg.dqn, cfg.r2d2
        self.host = host
        if not isinstance(act_space, gym.spaces.Discrete):
            raise ConfigError(f"env: algo r2d2 needs a Discrete action space, got {act_space}")
        self.layout = env_layout(cfg.env, obs_space)
        self.spec = r2d2_experience_spec(cfg, obs_space, act_space, self.layout)
        n_actions = int(act_space.n)
        self.n_mask = n_actions if cfg.env.action_mask is not None else 0
        self.learner = R2D2Learner(cfg, self.layout, n_actions, cfg.seed, cfg.training.device)
        self.capacity = max(1, d.buffer_size // r.chunk)
        self.buffer = SequenceReplay(
            self.capacity,
            r.chunk,
            d.n_step,
            r.burn_in,
            self.layout,
            state_size(r.core, r.core_size),
            n_actions,
            self.n_mask,
            seed=cfg.seed,
        )
        self.sequences = max(1, round(d.batch_size / r.chunk))  # per gradient step
        self.per: PrioritizedSampler | None = None
        if d.prioritized:
            steps = d.per_beta_steps
            if steps is None:
                per_step = self.sequences * r.chunk
                steps = int(cfg.max_steps * d.replay_ratio / per_step) if cfg.max_steps else 100_000
            self.per = PrioritizedSampler(
                self.capacity, d.per_alpha, d.per_beta_start, steps, d.per_eps, seed=cfg.seed + 1
            )
        self._log = RateLimitedLog(host.log, cfg.training.log_interval)
        self.new_obs: list[dict[str, np.ndarray]] = []
        steps_per_update = self.sequences * r.chunk
        self.ratio = ReplayRatio(d.replay_ratio, steps_per_update, d.max_update_debt, d.throttle)
        self.gate = PauseGate(d.max_update_debt)
        self.last_info: dict[str, float] = {}
        self._published_at = 0
        self._published_updates = 0
        # shares count message rows (chunks): the cap and the settled total in chunks too
        self.hooks = IntakeHooks(
            max_delay=d.max_model_delay,
            accept_rows=self.accept_rows,
            shares=ClientShares(
                d.max_client_debt * steps_per_update / d.replay_ratio / r.chunk,
                lambda: self.ratio.settled(self.learner.updates) / r.chunk,
                self.learning,
            ),
        )

    # ---------------------------------------------------------------- intake side

    def accept_rows(self, f: dict[str, np.ndarray], clients: np.ndarray | None = None) -> None:
        """The chunks of one intake round: checked, then into the replay. `clients` is the
        sending client's interned id per row (all 0 when the intake gives none)."""
        host = self.host
        n = len(f["length"])
        if n == 0:
            return
        host.intake.env_steps += int(f["length"].astype(np.int64).sum()) - n
        good, bad = check_chunks(f, self.cfg.r2d2.chunk, self.n_mask, self.cfg.r2d2.core_size)
        for reason, count in bad.items():
            if count:
                host.intake.rejected[reason] += count
                self._log.warning(reason, f"dropped {count} chunks ({reason})")
        ids = np.zeros(n, np.int64) if clients is None else np.asarray(clients, np.int64)
        if not good.all():
            f = {name: value[good] for name, value in f.items()}
            ids = ids[good]
        if len(ids) == 0:
            return
        steps = int(f["length"].astype(np.int64).sum())
        with host.lock:
            slots = self.buffer.add(f, ids)
            if self.per is not None:
                self.per.add(len(slots))  # the same ring slots, at the max priority
            if self.cfg.dqn.normalize_obs:
                self.new_obs.append(self._valid_obs(f))
            host.accepted += steps
            if self.gate.paused and self.gate.ignored(host.intake.drained_at, time.monotonic()):
                self.ratio.forgive(steps)
        host.data_ready.set()
        if self.cfg.dqn.throttle and not self.gate.paused and self.learning():
            self.throttle()

    def _valid_obs(self, f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The chunks' valid steps' observations, leaves (N, ...), for the normalizer."""
        chunk = self.cfg.r2d2.chunk
        valid = np.arange(chunk)[None] < f["length"].astype(np.int64)[:, None]
        return {leaf.name: f[field_name("obs", leaf)][valid] for leaf in self.layout.leaves}

    # ---------------------------------------------------------------- learner side

    def step(self) -> None:
        d, host = self.cfg.dqn, self.host
        self.merge_normalizer()
        owed = self.ratio.owed(host.accepted, self.learner.updates, self.learning())
        self.throttle()
        if owed > 0:
            if self.per is None:
                with host.lock:
                    _, batch = self.buffer.sample(self.sequences)
                self.last_info = self.learner.update(batch)
            else:
                self.prioritized_update()
            host.learned()
        else:
            host.data_ready.wait(0.01)
            host.data_ready.clear()
        if (
            host.accepted - self._published_at >= d.update_samples
            and self.learner.updates > self._published_updates
        ):
            self._published_at, self._published_updates = host.accepted, self.learner.updates
            state = host.finite_policy()
            if state is not None:
                host.model_id += 1
                host.publish(state)

    def prioritized_update(self) -> None:
        """One update on prioritized sequences, weighted by the importance weights; the
        sampled chunks get their new priorities unless the intake overwrote them meanwhile."""
        per, buffer, lock = self.per, self.buffer, self.host.lock
        assert per is not None
        with lock:
            drawn = per.sample(self.sequences)
            batch = buffer.batch_at(drawn.indices)
            added = buffer.total_added
        self.last_info = self.learner.update(batch, torch.from_numpy(drawn.weights))
        td = self.learner.td_errors
        if td is None:
            return
        with lock:
            keep = still_there(drawn.indices, buffer, buffer.total_added - added)  # type: ignore[arg-type]
            per.update(drawn.indices[keep], td[keep])

    def learning(self) -> bool:
        d = self.cfg.dqn
        return len(self.buffer) * self.cfg.r2d2.chunk >= max(d.learning_starts, d.batch_size)

    def throttle(self) -> None:
        """Pause the clients while the learner owes max_update_debt updates (as DQN's)."""
        if not self.cfg.dqn.throttle:
            return
        host = self.host
        self.gate.steer(
            lambda: self.ratio.pending(
                host.accepted, self.learner.updates, host.intake.queued_steps(), self.learning()
            ),
            lambda on: host.link.set_throttle(on),
        )

    def merge_normalizer(self) -> None:
        if not self.new_obs:
            return
        with self.host.lock:
            parts, self.new_obs = self.new_obs, []
        obs = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        self.learner.update_normalizer(obs)

    def release(self) -> None:
        self.gate.release(lambda on: self.host.link.set_throttle(on))

    # ---------------------------------------------------------------- stats and logs

    def stats(self) -> dict[str, Any]:
        learning = self.learning()
        debt = self.ratio.debt(self.host.accepted, self.learner.updates)
        d = self.cfg.dqn
        return {
            "buffer": len(self.buffer),
            "throttled": int(self.gate.paused),
            "pauses": self.gate.count,
            "forgiven": int(self.ratio.forgiven),
            "debt": int(debt) if learning else 0,
            "loss": round(self.last_info.get("loss", float("nan")), 6),
            "q_mean": round(self.last_info.get("q_mean", float("nan")), 6),
            "epsilon": round(epsilon(d, self.host.env_steps, 0, 1), 6),
            **({"per_beta": round(self.per.beta, 6)} if self.per is not None else {}),
        }

    def note(self, event: str) -> str:
        if event == "stopped":
            return f", {self.learner.updates} updates"
        if event == "resumed":
            n = len(self.buffer)
            per = " and their priorities" if self.per is not None and n else ""
            return f"sequence replay {f'restored with {n} chunks{per}' if n else 'empty'}; "
        return ""

    def weights_meta(self) -> dict[str, Any]:
        return {}

    # ---------------------------------------------------------------- checkpoints

    def checkpoint(self, with_buffer: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        self.merge_normalizer()
        parts: dict[str, Any] = {"rng": {"replay": self.buffer.rng.bit_generator.state}}
        if with_buffer:
            parts["buffer"] = self.buffer.state_dict()
        if self.per is not None:
            state = self.per.state_dict()
            keep = ("steps", "max_priority", "rng_state")
            parts["prioritized"] = state if with_buffer else {k: state[k] for k in keep}
        d = self.cfg.dqn
        counters = {
            "buffer_size": len(self.buffer),
            "exploration": (
                {"mode": "schedule", "epsilon": round(epsilon(d, self.host.env_steps, 0, 1), 6)}
                if d.exploration == "schedule"
                else {"mode": "ladder", "epsilon_max": d.ladder_eps, "clients": self.host.clients}
            ),
        }
        return parts, counters

    def restore(self, state: dict[str, Any], counters: dict[str, Any]) -> None:
        if "buffer" in state:
            try:
                self.buffer.load_state_dict(state["buffer"])
            except (KeyError, ValueError) as e:
                raise CheckpointError(
                    f"the checkpoint's sequence replay does not fit: {e}"
                ) from None
        if "replay" in state["rng"]:
            self.buffer.rng.bit_generator.state = state["rng"]["replay"]
        if self.per is not None:
            restore_priorities(self.per, self.buffer, state.get("prioritized"))  # type: ignore[arg-type]
        self.ratio.restart(self.host.accepted, self.learner.updates)
        self._published_at, self._published_updates = self.host.accepted, self.learner.updates
