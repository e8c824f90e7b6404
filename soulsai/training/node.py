"""The DQN training node: intake -> replay -> learner -> weight broadcast, plus checkpoints.

Asynchronous (Ape-X-like): any number of clients; a sample is accepted when its model id lags
the newest by at most `dqn.max_model_delay`. A replay-ratio control balances learning against
sampling: the learner owes `accepted * replay_ratio / batch_size` gradient steps and pays them
while the intake thread keeps draining Redis.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soulsai.config import Config
from soulsai.envs import env_spaces
from soulsai.logs import RateLimitedLog
from soulsai.metrics import NodeMetrics
from soulsai.model.schedules import epsilon
from soulsai.model.specs import dqn_experience_spec
from soulsai.training.algorithms.dqn import DQNLearner
from soulsai.training.checkpoint import rng_state, set_rng_state
from soulsai.training.common import (
    STATS_INTERVAL,
    Rates,
    announce_run,
    exchange_stats,
    publishable,
    run_command,
    telemetry_episodes,
)
from soulsai.training.intake import Intake
from soulsai.training.replay import ReplayBuffer
from soulsai.training.saves import Saves, describe
from soulsai.training.shares import ClientShares
from soulsai.transport import RedisTarget, TrainerLink, open_link
from soulsai.transport.commands import encode_command
from soulsai.transport.envelope import Experience
from soulsai.transport.links import TRANSIENT
from soulsai.transport.weights import encode_weights_parts

log = logging.getLogger(__name__)

# An honest client stops within a poll of the throttle key (0.5 s) of a pause. Samples pushed
# after Redis's queue was seen empty more than PAUSE_GRACE into a pause come from clients that
# ignore it, and so do samples more than PAUSE_FLOOD into a pause whose queue never emptied:
# their updates are forgiven, not owed.
PAUSE_GRACE = 2.0
PAUSE_FLOOD = 30.0

METRICS = {
    "env_steps": "env steps received (accepted or stale)",
    "accepted": "transitions accepted into the replay buffer",
    "updates": "gradient updates",
    "model_id": "newest published model id",
    "buffer": "transitions in the replay buffer",
    "clients": "connected sampling clients (live heartbeats)",
    "queued": "experience messages waiting in Redis",
    "client_dropped": "experience messages the live clients dropped (full outbox or queue)",
    "samples_per_s": "accepted transitions per second (last interval)",
    "updates_per_s": "gradient updates per second (last interval)",
    "loss": "last TD loss",
    "nonfinite_updates": "gradient steps and normalizer merges skipped: NaN or inf",
    "nonfinite_blocked": "publishes and checkpoints refused: the model held NaN or inf",
}


class DQNTrainingNode:
    def __init__(
        self,
        cfg: Config,
        target: RedisTarget,
        run_dir: Path,
        stop: threading.Event,
        resume: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.stop = stop
        torch.manual_seed(cfg.seed)
        if cfg.training.threads:
            torch.set_num_threads(cfg.training.threads)
        self.link = open_link(TrainerLink, target, cfg.key_prefix, wait=cfg.connect_wait)
        obs_space, act_space = env_spaces(cfg.env)
        self.spec = dqn_experience_spec(
            obs_space,
            act_space,
            cfg.dqn.n_step,
            cfg.training.max_batch,
            cfg.training.max_message_bytes,
            max_abs_obs=cfg.training.max_abs_obs,
            max_abs_reward=cfg.training.max_abs_reward,
        )
        d = cfg.dqn
        self.learner = DQNLearner(
            d, tuple(obs_space.shape), int(act_space.n), cfg.seed, cfg.training.device
        )
        self.buffer = ReplayBuffer(
            d.buffer_size, tuple(obs_space.shape), obs_space.dtype, seed=cfg.seed
        )
        self.lock = threading.Lock()
        self.data_ready = threading.Event()
        self.new_obs: list[np.ndarray] = []
        self.accepted = 0
        self.model_id = 0
        self.env_steps_offset = 0
        self.debt_base = 0.0  # accepted transitions that owe no updates (warm-up, resume, forgiven)
        self._updates_at_start = 0  # learner updates a resumed checkpoint brought along
        self._gamma_pow = (d.gamma ** np.arange(d.n_step + 1)).astype(np.float32)
        self.intake = Intake(
            self.link,
            self.spec,
            self._accept,
            lambda: self.model_id,
            d.max_model_delay,
            cfg.training.intake_batch,
            stop,
            accept_rows=self._accept_rows,
            shares=ClientShares(
                d.max_client_debt * d.batch_size / d.replay_ratio, self._settled, self._learning
            ),
        )
        self.metrics = NodeMetrics("trainer", METRICS)
        self.last_info: dict[str, float] = {}
        self.clients = 0
        self.throttled = False
        self._throttle_lock = threading.Lock()
        self._throttle_renew = 0.0
        self._paused_at = 0.0
        self.forgiven = 0.0  # accepted transitions whose updates were forgiven (_ignored_pause)
        self.throttle_count = 0
        self.blocked = 0  # publishes refused: the weights held NaN or inf
        self._log = RateLimitedLog(log, cfg.training.log_interval)
        self.episodes_at_start = 0  # the telemetry node's count may lag after a resume
        self.saves = Saves(cfg, run_dir, self)
        if resume is not None:
            self._restore(resume)

    # ---------------------------------------------------------------- intake side

    def _accept(self, exp: Experience) -> None:
        self._accept_rows(exp.fields)

    def _accept_rows(self, f: dict[str, np.ndarray]) -> None:
        """The good transitions of one intake round into the buffer, one write per field."""
        # bootstrap factor gamma**k, or 0 where the episode terminated
        discount = self._gamma_pow[f["steps"]] * (1 - f["terminated"])
        n = len(discount)
        with self.lock:
            self.buffer.add_batch(f["obs"], f["action"], f["reward"], f["next_obs"], discount)
            if self.cfg.dqn.normalize_obs:
                self.new_obs.append(f["obs"])
            self.accepted += n
            if self.throttled and self._ignored_pause():
                self.debt_base += n
                self.forgiven += n
        self.data_ready.set()
        if self.cfg.dqn.throttle and not self.throttled and self._learning():
            self._throttle()  # at once: the learner thread looks only between gradient steps

    def _ignored_pause(self) -> bool:
        """True when samples arriving now were sent by clients that ignore the pause."""
        if self.intake.drained_at - self._paused_at > PAUSE_GRACE:
            return True
        return time.monotonic() - self._paused_at > PAUSE_FLOOD

    @property
    def env_steps(self) -> int:
        return self.env_steps_offset + self.intake.env_steps

    # ---------------------------------------------------------------- main loop

    def run(self) -> None:
        cfg = self.cfg
        self.metrics.serve(
            cfg.training.metrics_port, "training.metrics_port", cfg.training.metrics_host
        )
        announce_run(self.link, cfg, self.run_dir)
        self._publish()
        self.intake.start()
        log.info("training node up: %s on %s, run folder %s", cfg.algo, cfg.env.id, self.run_dir)
        d = cfg.dqn
        next_stats = next_log = 0.0
        rates = Rates(samples=self.accepted, updates=self.learner.updates)
        published_at, published_updates = self.accepted, self.learner.updates
        try:
            while not self.stop.is_set():
                self._merge_normalizer()
                owed = self._owed_updates()
                self._throttle()
                if owed > 0:
                    with self.lock:
                        batch = self.buffer.sample(d.batch_size)
                    self.last_info = self.learner.update(batch)
                    if cfg.checkpoint.every and self.learner.updates % cfg.checkpoint.every == 0:
                        self.saves.save("periodic")
                else:
                    self.data_ready.wait(0.01)
                    self.data_ready.clear()
                # Weights change only through updates: without learning, nothing to publish.
                if (
                    self.accepted - published_at >= d.update_samples
                    and self.learner.updates > published_updates
                ):
                    published_at, published_updates = self.accepted, self.learner.updates
                    state = self._finite_policy()
                    if state is not None:
                        self.model_id += 1
                        self._publish(state)
                now = time.monotonic()
                if now >= next_stats:
                    next_stats = now + STATS_INTERVAL
                    self._tick(now, rates)
                if now >= next_log:
                    next_log = now + cfg.training.log_interval
                    self._log_progress()
        finally:
            self.stop.set()
            if self.throttled:
                with contextlib.suppress(TRANSIENT):
                    self.link.set_throttle(False)
            self.intake.join(2.0)
            self.saves.save("final")
            with contextlib.suppress(TRANSIENT):
                self.link.clear_alive()
            log.info(
                "training node stopped at %d env steps, %d updates",
                self.env_steps,
                self.learner.updates,
            )

    def _learning(self) -> bool:
        d = self.cfg.dqn
        return len(self.buffer) >= max(d.learning_starts, d.batch_size)

    def _debt(self) -> float:
        """Gradient steps owed to the replay ratio for what was accepted (and not forgiven)."""
        d = self.cfg.dqn
        return (self.accepted - self.debt_base) * d.replay_ratio / d.batch_size - self._paid

    def _owed_updates(self) -> int:
        d = self.cfg.dqn
        if not self._learning():
            self.debt_base = self.accepted
            return 0
        owed = self._debt()
        # Paused clients stop new samples, but what they sent before they saw the pause still
        # arrives: owe it too, so the replay ratio holds. Forgive only what no pause explains
        # (_accept_rows: samples long after it), or any debt beyond max_update_debt when
        # throttling is off.
        if not d.throttle and owed > d.max_update_debt:
            forgiven = (owed - d.max_update_debt) * d.batch_size / d.replay_ratio
            self.debt_base += forgiven
            self.forgiven += forgiven
            owed = d.max_update_debt
        return int(owed)

    def _throttle(self) -> None:
        """Pause the clients while the learner owes max_update_debt updates; resume at half.

        What waits in Redis's queue counts too: it will be owed once popped, and a queue that
        grows means the clients outrun the learner. Pausing on the debt alone would let many
        fast clients fill the queue (up to training.max_queue messages) before the first pause.
        """
        d = self.cfg.dqn
        if not d.throttle:
            return
        with self._throttle_lock:  # the learner loop and the intake thread both call this
            now = time.monotonic()
            owed = 0
            if self._learning():
                queued = self.intake.queued_steps() * d.replay_ratio / d.batch_size
                owed = int(self._debt() + queued)
            want = owed >= d.max_update_debt or (self.throttled and owed > d.max_update_debt // 2)
            if want == self.throttled and not (want and now >= self._throttle_renew):
                return
            try:
                self.link.set_throttle(want)
            except TRANSIENT:
                return
            if want and not self.throttled:
                self._paused_at = now
            self.throttled = want
            self._throttle_renew = now + 1.0
            self.throttle_count += int(want)

    def _settled(self) -> float:
        """Accepted transitions whose updates are paid or forgiven (for ClientShares)."""
        d = self.cfg.dqn
        return self.debt_base + self._paid * d.batch_size / d.replay_ratio

    @property
    def _paid(self) -> int:
        """Updates done by this node since it started (or resumed)."""
        return self.learner.updates - self._updates_at_start

    def _merge_normalizer(self) -> None:
        if not self.new_obs:
            return
        with self.lock:
            chunks, self.new_obs = self.new_obs, []
        self.learner.update_normalizer(np.concatenate(chunks))

    def _finite_policy(self) -> dict[str, torch.Tensor] | None:
        """The policy's tensors, or None (counted) when any holds NaN or inf."""
        state = publishable(self.learner.policy_state(), self._log)
        self.blocked += state is None
        return state

    def _publish(self, state: dict[str, torch.Tensor] | None = None) -> None:
        state = state if state is not None else self._finite_policy()
        if state is None:
            return
        meta = {
            "env_steps": self.env_steps,
            "num_clients": max(1, self.clients),
            "updates": self.learner.updates,
        }
        blob = encode_weights_parts(state, self.model_id, meta, self.cfg.training.weights_dtype)
        try:
            self.link.publish_weights(blob, self.model_id)
        except TRANSIENT as e:
            log.warning("cannot publish weights (%s); will retry", type(e).__name__)

    def stats(self) -> dict[str, Any]:
        return {
            "env_steps": self.env_steps,
            "accepted": self.accepted,
            "updates": self.learner.updates,
            "model_id": self.model_id,
            "buffer": len(self.buffer),
            "clients": self.clients,
            "throttled": int(self.throttled),
            "pauses": self.throttle_count,
            "forgiven": int(self.forgiven),
            "debt": int(self._debt()) if self._learning() else 0,
            "rejected": sum(self.intake.rejected.values()),
            "rejected_by_reason": json.dumps(dict(self.intake.rejected)),
            "nonfinite_updates": self.learner.nonfinite_updates,
            "nonfinite_blocked": self.blocked + self.saves.refused,
            "loss": round(self.last_info.get("loss", float("nan")), 6),
            "time": time.time(),
        }

    def _republish(self) -> None:
        announce_run(self.link, self.cfg, self.run_dir)
        self._publish()

    def _tick(self, now: float, rates: Rates) -> None:
        s = self.stats()
        s.update(rates.update(now, samples=self.accepted, updates=self.learner.updates))
        clients = exchange_stats(self.link, s, self._command, self._republish)
        if clients is not None:
            self.clients = clients
        self.metrics.set_all(s, dict(self.intake.rejected))
        self._last_stats = s

    def _log_progress(self) -> None:
        s = getattr(self, "_last_stats", None) or self.stats()
        log.info(
            "env_steps=%d accepted=%d updates=%d model=%d buffer=%d clients=%d "
            "samples/s=%s updates/s=%s loss=%s rejected=%s client_dropped=%s",
            s["env_steps"],
            s["accepted"],
            s["updates"],
            s["model_id"],
            s["buffer"],
            s["clients"],
            s.get("samples_per_s"),
            s.get("updates_per_s"),
            s["loss"],
            dict(self.intake.rejected),
            s.get("client_dropped", 0),
        )

    # ---------------------------------------------------------------- commands and saves

    def _command(self, raw: bytes) -> None:
        run_command(raw, self.link, self.saves, self.stop, self.intake.rejected)

    def checkpoint_state(self, with_buffer: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """The node's state as checkpoint parts, and its counters (see training.saves)."""
        self._merge_normalizer()
        episodes = self._episodes()  # a Redis round trip: not under the lock
        with self.lock:
            state: dict[str, Any] = {
                "policy": self.learner.policy_state(),
                "learner": self.learner.state_dict(),
                "rng": {**rng_state(), "replay": self.buffer.rng.bit_generator.state},
            }
            if with_buffer:
                state["buffer"] = self.buffer.state_dict()
            counters = {
                "env_steps": self.env_steps,
                "model_id": self.model_id,
                "updates": self.learner.updates,
                "accepted": self.accepted,
                "episodes": episodes,
                "buffer_size": len(self.buffer),
                # exploration is a function of these counters; shown for the reader
                "exploration": self._exploration(),
            }
        state["node"] = dict(counters)
        return state, counters

    def _exploration(self) -> dict[str, Any]:
        d = self.cfg.dqn
        if d.exploration == "schedule":
            return {"mode": "schedule", "epsilon": round(epsilon(d, self.env_steps, 0, 1), 6)}
        return {"mode": "ladder", "epsilon_max": d.ladder_eps, "clients": self.clients}

    def _episodes(self) -> int:
        return telemetry_episodes(self.link, self.episodes_at_start)

    def restore_state(self, state: dict[str, Any], summary: dict[str, Any]) -> None:
        """Continue from a checkpoint: learner, replay buffer (when saved), RNGs, counters."""
        counters = state.get("node") or summary
        self.learner.load_state_dict(state["learner"])
        if "buffer" in state:
            self.buffer.load_state_dict(state["buffer"])
        set_rng_state(state["rng"])
        if "replay" in state["rng"]:
            self.buffer.rng.bit_generator.state = state["rng"]["replay"]
        self.env_steps_offset = int(counters["env_steps"])
        self.model_id = int(counters["model_id"]) + 1  # the next publish continues the sequence
        self.accepted = int(counters["accepted"])
        self.episodes_at_start = int(counters.get("episodes") or 0)
        self.debt_base = self.accepted
        self._updates_at_start = self.learner.updates

    def _restore(self, folder: Path) -> None:
        summary = self.saves.restore(folder)
        log.info(
            "resumed from %s: %s; replay buffer %s; next model id %d",
            folder,
            describe(summary),
            f"restored with {len(self.buffer)} transitions" if len(self.buffer) else "empty",
            self.model_id,
        )


def notify_shutdown(link: TrainerLink) -> None:
    """Ask every client to stop (used by `soulsai train` and the server on exit)."""
    link.broadcast(encode_command("shutdown"))
