"""DQN inside the node shell: intake -> replay -> learner, paced by the replay ratio.

Asynchronous (Ape-X-like): any number of clients; a sample is accepted when its model id lags
the newest by at most `dqn.max_model_delay`. The learner owes `accepted * replay_ratio /
batch_size` gradient steps and pays them while the intake thread keeps draining Redis; the
clients are paused while it owes `max_update_debt` (`soulsai.training.ratio`).

Observations arrive per leaf of the env's observation layout (`env.obs_keys`,
`env.drop_constant_obs`) and are stored so; with `env.action_mask` each transition carries its
next observation's valid actions as bits (`next_mask`), checked here: a set padding bit, or no
valid action after a step that did not terminate, drops the transition (counted as `bad_mask`).

Where the observation is an image frame (`env.frame_rows`, soulsai.model.specs.frame_rows: a
bare uint8 image Box, k = 1, or `env.atari.frame_stack`'s uint8 Box (k, *frame)) transitions
arrive as frame rows and go to a `FrameReplay` that keeps each frame once and rebuilds obs and
next_obs when sampling (soulsai.training.frame_replay); prioritized replay and the observation
normalizer are not available there (stacked frames: ConfigError; a bare frame then travels as
obs + next_obs).

With `dqn.prioritized` a `PrioritizedSampler` sits beside the replay ring, slot for slot
(soulsai.training.algorithms.dqn_replay: its bookkeeping and why new rows take the max priority).
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np

from soulsai.errors import CheckpointError, ConfigError
from soulsai.logs import RateLimitedLog
from soulsai.model.masks import unpack_mask
from soulsai.model.obs import continuous_features, env_layout
from soulsai.model.obs_wire import from_fields
from soulsai.model.schedules import epsilon
from soulsai.model.specs import dqn_experience_spec, frame_rows
from soulsai.training.algorithms.dqn import DQNLearner
from soulsai.training.algorithms.dqn_replay import (
    frame_store,
    per_sampler,
    prioritized_update,
    restore_priorities,
)
from soulsai.training.driver import Host, IntakeHooks
from soulsai.training.frame_replay import FINAL, FrameReplay
from soulsai.training.ratio import PauseGate, ReplayRatio
from soulsai.training.replay import ReplayBuffer
from soulsai.training.shares import ClientShares


class DQNDriver:
    metrics = {
        "accepted": "transitions accepted into the replay buffer",
        "buffer": "transitions in the replay buffer",
        "loss": "last TD loss",
        "q_mean": "mean Q value of the last update's batch",
        "epsilon": "exploration rate now (the schedule's, or the ladder's highest; 0: noisy)",
        "per_beta": "prioritized replay's importance-sampling exponent now",
        "nonfinite_updates": "gradient steps and normalizer merges skipped: NaN or inf",
    }
    rates: tuple[str, ...] = ("samples", "updates")
    progress = (
        "env_steps={env_steps} accepted={accepted} updates={updates} model={model_id} "
        "buffer={buffer} clients={clients} samples/s={samples_per_s} "
        "updates/s={updates_per_s} loss={loss} rejected={rejected} client_dropped={client_dropped}"
    )

    def __init__(self, host: Host, obs_space: gym.Space, act_space: gym.Space) -> None:
        cfg = self.cfg = host.cfg
        d = cfg.dqn
        self.host = host
        if not isinstance(act_space, gym.spaces.Discrete):
            raise ConfigError(f"env: DQN needs a Discrete action space, got {act_space}")
        self.layout = env_layout(cfg.env, obs_space)
        self.n_mask = int(act_space.n) if cfg.env.action_mask is not None else 0
        frames = frame_rows(cfg, obs_space)  # (one frame's space, k) or None
        self.frame_space = frames[0] if frames is not None else None
        self.spec = dqn_experience_spec(
            obs_space,
            act_space,
            d.n_step,
            cfg.training.max_batch,
            cfg.training.max_message_bytes,
            max_abs_obs=cfg.training.max_abs_obs,
            max_abs_reward=cfg.training.max_abs_reward,
            layout=self.layout,
            masked=self.n_mask > 0,
        )
        self.learner = DQNLearner(
            d,
            self.layout,
            int(act_space.n),
            cfg.seed,
            cfg.training.device,
            cfg.env.discrete_obs,
            cfg.env.embedding_dim,
        )
        self.buffer: ReplayBuffer | FrameReplay
        if frames is not None:  # the spec becomes the frame rows'
            self.spec, self.buffer = frame_store(
                cfg, obs_space, act_space, frames[0], self.n_mask, frames[1]
            )
        else:
            self.buffer = ReplayBuffer(
                d.buffer_size,
                tuple(obs_space.shape or ()),
                obs_space.dtype or np.float32,
                seed=cfg.seed,
                layout=self.layout,
                n_mask=self.n_mask,
            )
        self.per = per_sampler(cfg) if d.prioritized else None
        self._log = RateLimitedLog(host.log, cfg.training.log_interval)
        self.new_obs: list[np.ndarray] = []
        self.ratio = ReplayRatio(d.replay_ratio, d.batch_size, d.max_update_debt, d.throttle)
        self.gate = PauseGate(d.max_update_debt)
        self._gamma_pow = (d.gamma ** np.arange(d.n_step + 1)).astype(np.float32)
        self.last_info: dict[str, float] = {}
        self._published_at = 0  # accepted transitions at the last publish
        self._published_updates = 0  # and updates
        self.hooks = IntakeHooks(
            max_delay=d.max_model_delay,
            accept_rows=self.accept_rows,
            shares=ClientShares(
                d.max_client_debt * d.batch_size / d.replay_ratio,
                lambda: self.ratio.settled(self.learner.updates),
                self.learning,
            ),
        )

    # ---------------------------------------------------------------- intake side

    def accept_frames(self, f: dict[str, np.ndarray], clients: np.ndarray) -> None:
        """Frame rows into the frame store, their streams keyed by (client, stream id). A
        transition with bad mask bits loses its transition (counted as `bad_mask`) but keeps
        its frame, which other stacks need."""
        host = self.host
        steps = f["steps"]
        trans = ((f["flags"] & FINAL) == 0) & (steps > 0)
        if self.n_mask:
            bad = self.bad_masks(f) & trans
            if bad.any():
                trans &= ~bad
                steps = np.where(bad, 0, steps)
        discount = self._gamma_pow[steps] * (1 - f["terminated"])
        n = int(trans.sum())
        assert isinstance(self.buffer, FrameReplay)
        with host.lock:
            self.buffer.add_rows(
                clients,
                f["stream"],
                f["seq"],
                f["flags"],
                f["frame"],
                f["action"],
                f["reward"],
                steps,
                discount,
                f.get("next_mask"),
            )
            host.accepted += n
            if self.gate.paused and self.gate.ignored(host.intake.drained_at, time.monotonic()):
                self.ratio.forgive(n)
        host.data_ready.set()
        if self.cfg.dqn.throttle and not self.gate.paused and self.learning():
            self.throttle()

    def check_masks(self, f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`f` without the transitions whose mask bits are bad (`bad_masks`)."""
        bad = self.bad_masks(f)
        return {name: value[~bad] for name, value in f.items()} if bad.any() else f

    def bad_masks(self, f: dict[str, np.ndarray]) -> np.ndarray:
        """Which transitions' mask bits are bad (a padding bit set, or no valid action where
        the episode goes on); they are counted as `bad_mask`."""
        bits, n = f["next_mask"], self.n_mask
        pad = 8 * bits.shape[1] - n
        bad = ~unpack_mask(bits, n).any(axis=1) & (f["terminated"] == 0)
        if pad:
            bad |= (bits[:, -1] & ((1 << pad) - 1)) != 0
        if bad.any():
            count = int(bad.sum())
            self.host.intake.rejected["bad_mask"] += count
            self._log.warning("bad_mask", f"dropped {count} transitions with bad action-mask bits")
        return bad

    def accept_rows(self, f: dict[str, np.ndarray], clients: np.ndarray) -> None:
        """The good transitions of one intake round into the buffer, one write per field
        (`clients`: the sender of each row, which keys the frame store's streams)."""
        if self.frame_space is not None:
            return self.accept_frames(f, clients)
        host = self.host
        if self.n_mask:
            f = self.check_masks(f)
        # bootstrap factor gamma**k, or 0 where the episode terminated
        discount = self._gamma_pow[f["steps"]] * (1 - f["terminated"])
        n = len(discount)
        if n == 0:
            return
        layout = self.layout
        assert isinstance(self.buffer, ReplayBuffer)  # frame rows went to accept_frames
        obs = f["obs"] if layout.plain else from_fields(layout, f, "obs")
        next_obs = f["next_obs"] if layout.plain else from_fields(layout, f, "next_obs")
        with host.lock:
            self.buffer.add_batch(
                obs, f["action"], f["reward"], next_obs, discount, f.get("next_mask")
            )
            if self.per is not None:
                self.per.add(n)  # the same ring slots, at the max priority
            if self.cfg.dqn.normalize_obs:
                self.new_obs.append(f["obs"] if layout.plain else continuous_features(layout, obs))
            host.accepted += n
            if self.gate.paused and self.gate.ignored(host.intake.drained_at, time.monotonic()):
                self.ratio.forgive(n)
        host.data_ready.set()
        if self.cfg.dqn.throttle and not self.gate.paused and self.learning():
            self.throttle()  # at once: the learner thread looks only between gradient steps

    # ---------------------------------------------------------------- learner side

    def step(self) -> None:
        d, host = self.cfg.dqn, self.host
        self.merge_normalizer()
        owed = self.owed_updates()
        self.throttle()
        if owed > 0:
            if self.per is None:
                with host.lock:
                    try:
                        batch = self.buffer.sample(d.batch_size)
                    except ValueError as e:  # a frame store whose every stack is broken
                        batch, broken = None, str(e)
                if batch is None:
                    self._log.warning("replay", f"no update: {broken}")
                    host.data_ready.wait(0.01)
                    return
                self.last_info = self.learner.update(batch)
            else:
                self.prioritized_update()
            host.learned()
        else:
            host.data_ready.wait(0.01)
            host.data_ready.clear()
        # Weights change only through updates: without learning, nothing to publish.
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
        """One update on a prioritized sample (dqn_replay.prioritized_update)."""
        assert self.per is not None and isinstance(self.buffer, ReplayBuffer)  # no PER on frames
        info = prioritized_update(
            self.per, self.buffer, self.learner, self.host.lock, self.cfg.dqn.batch_size
        )
        self.last_info = info

    def learning(self) -> bool:
        d = self.cfg.dqn
        return len(self.buffer) >= max(d.learning_starts, d.batch_size)

    def owed_updates(self) -> int:
        return self.ratio.owed(self.host.accepted, self.learner.updates, self.learning())

    def throttle(self) -> None:
        """Pause the clients while the learner owes max_update_debt updates; resume at half.

        What waits in Redis's queue counts too (`ReplayRatio.pending`): pausing on the debt
        alone would let many fast clients fill the queue (up to training.max_queue messages)
        before the first pause.
        """
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
            chunks, self.new_obs = self.new_obs, []
        self.learner.update_normalizer(np.concatenate(chunks))

    def release(self) -> None:
        self.gate.release(lambda on: self.host.link.set_throttle(on))

    # ---------------------------------------------------------------- stats and logs

    def stats(self) -> dict[str, Any]:
        learning = self.learning()
        debt = self.ratio.debt(self.host.accepted, self.learner.updates)
        return {
            "buffer": len(self.buffer),
            "throttled": int(self.gate.paused),
            "pauses": self.gate.count,
            "forgiven": int(self.ratio.forgiven),
            "debt": int(debt) if learning else 0,
            "loss": round(self.last_info.get("loss", float("nan")), 6),
            "q_mean": round(self.last_info.get("q_mean", float("nan")), 6),
            # every client's epsilon now (schedule), or the ladder's highest (client 0's)
            "epsilon": 0.0 if self.cfg.dqn.noisy else self._epsilon(),
            **({"per_beta": round(self.per.beta, 6)} if self.per is not None else {}),
        }

    def _epsilon(self) -> float:
        return round(epsilon(self.cfg.dqn, self.host.env_steps, 0, 1), 6)

    def note(self, event: str) -> str:
        if event == "stopped":
            return f", {self.learner.updates} updates"
        if event == "resumed":
            n = len(self.buffer)
            per = " and their priorities" if self.per is not None and n else ""
            return f"replay buffer {f'restored with {n} transitions{per}' if n else 'empty'}; "
        return ""

    def weights_meta(self) -> dict[str, Any]:
        return {}

    # ---------------------------------------------------------------- checkpoints

    def checkpoint(self, with_buffer: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        self.merge_normalizer()
        parts: dict[str, Any] = {"rng": {"replay": self.buffer.rng.bit_generator.state}}
        if with_buffer:
            parts["buffer"] = self.buffer.state_dict()
        if self.per is not None:  # priorities only beside the rows they belong to
            state = self.per.state_dict()
            keep = ("steps", "max_priority", "rng_state")
            parts["prioritized"] = state if with_buffer else {k: state[k] for k in keep}
        counters = {
            "buffer_size": len(self.buffer),
            # exploration is a function of these counters; shown for the reader
            "exploration": self._exploration(),
        }
        return parts, counters

    def _exploration(self) -> dict[str, Any]:
        d = self.cfg.dqn
        if d.noisy:
            return {"mode": "noisy", "epsilon": 0.0, "sigma0": d.noisy_sigma0}
        if d.exploration == "schedule":
            return {"mode": "schedule", "epsilon": round(epsilon(d, self.host.env_steps, 0, 1), 6)}
        return {"mode": "ladder", "epsilon_max": d.ladder_eps, "clients": self.host.clients}

    def restore(self, state: dict[str, Any], counters: dict[str, Any]) -> None:
        saved = state.get("buffer")
        rows = self.frame_space is not None
        old = saved is not None and rows != ("row.frame" in saved)
        if old:  # observation pairs where the store keeps frame rows, or the other way round
            held = (
                "frame rows" if rows is False else "observation pairs (from before the frame store)"
            )
            self.host.log.warning(
                f"the checkpoint's replay buffer holds {held}, which this run's replay does not "
                "keep (env.frame_rows, dqn.prioritized, dqn.normalize_obs): resuming with an "
                "empty one"
            )
        if "buffer" in state and not old:
            try:
                self.buffer.load_state_dict(state["buffer"])
            except ValueError as e:
                raise CheckpointError(f"the checkpoint's replay buffer does not fit: {e}") from None
        if "replay" in state["rng"]:
            self.buffer.rng.bit_generator.state = state["rng"]["replay"]
        if self.per is not None:
            assert isinstance(self.buffer, ReplayBuffer)  # no PER on frames
            restore_priorities(self.per, self.buffer, state.get("prioritized"))
        self.ratio.restart(self.host.accepted, self.learner.updates)
        self._published_at, self._published_updates = self.host.accepted, self.learner.updates
