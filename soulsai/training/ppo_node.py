"""The PPO training node: synchronous iterations that survive clients joining and leaving.

Iteration k: publish model k; every connected client samples with exactly model k and sends
whole rollout fragments tagged k; once the node holds `ppo.n_steps_total` transitions of model
k, from whichever clients delivered them, it trains and publishes model k+1. Samples of any
other model id are rejected and counted (`stale_model`, `future_model`), and so are samples of
model k that arrive after its batch was closed. Clients sample continuously, so one that dies
only slows the others' iteration down; if no sample of model k arrived for
`ppo.client_timeout` seconds (every client gone), the node trains on what it has when that is
at least `ppo.min_fraction` of the target, and otherwise waits and logs why.

While the node trains, clients are paused (`ppo.pause_clients`): what they sampled with model
k after its batch closed would be rejected anyway.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soulsai.config import Config
from soulsai.config.schema import check_ppo_config
from soulsai.envs import env_spaces
from soulsai.logs import RateLimitedLog
from soulsai.metrics import NodeMetrics
from soulsai.model.specs import ppo_experience_spec
from soulsai.training.algorithms.ppo import PPOLearner
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
from soulsai.training.rollout import RolloutBuffer
from soulsai.training.saves import Saves, describe
from soulsai.transport import RedisTarget, TrainerLink, open_link
from soulsai.transport.envelope import Experience
from soulsai.transport.links import TRANSIENT
from soulsai.transport.weights import encode_weights_parts

log = logging.getLogger(__name__)

PAUSE_TTL = 30.0  # seconds a pause outlives a training node that died mid-update

METRICS = {
    "env_steps": "env steps received (accepted or stale)",
    "accepted": "transitions accepted into iterations",
    "updates": "gradient updates",
    "model_id": "newest published model id",
    "iterations": "PPO iterations trained",
    "collected": "transitions of the current model collected so far",
    "clients": "connected sampling clients (live heartbeats)",
    "queued": "experience messages waiting in Redis",
    "client_dropped": "experience messages the live clients dropped (full outbox or queue)",
    "samples_per_s": "accepted transitions per second (last interval)",
    "iteration_seconds": "wall time of the last iteration (publish to publish)",
    "loss": "total loss of the last minibatch",
    "approx_kl": "approximate KL divergence of the last minibatch",
    "clipfrac": "fraction of clipped ratios in the last iteration",
    "entropy": "policy entropy of the last minibatch",
    "explained_variance": "explained variance of the value function (last iteration)",
    "lr": "learning rate of the last iteration",
    "nonfinite_updates": "minibatch steps and statistics merges skipped: NaN or inf",
    "nonfinite_blocked": "publishes and checkpoints refused: the model held NaN or inf",
}


class PPOTrainingNode:
    def __init__(
        self,
        cfg: Config,
        target: RedisTarget,
        run_dir: Path,
        stop: threading.Event,
        resume: Path | None = None,
    ) -> None:
        check_ppo_config(cfg)
        self.cfg = cfg
        self.run_dir = run_dir
        self.stop = stop
        torch.manual_seed(cfg.seed)
        if cfg.training.threads:
            torch.set_num_threads(cfg.training.threads)
        self.link = open_link(TrainerLink, target, cfg.key_prefix, wait=cfg.connect_wait)
        obs_space, act_space = env_spaces(cfg.env)
        self.spec = ppo_experience_spec(
            obs_space,
            act_space,
            cfg.training.max_batch,
            cfg.training.max_message_bytes,
            max_abs_obs=cfg.training.max_abs_obs,
            max_abs_reward=cfg.training.max_abs_reward,
            gamma=cfg.ppo.gamma,
        )
        p = cfg.ppo
        self.learner = PPOLearner(p, obs_space, act_space, cfg.seed, cfg.training.device)
        self.rollout = RolloutBuffer(p.gamma, p.gae_lambda)
        self.lock = threading.Lock()  # guards rollout, collecting, model_id changes, counters
        self.data_ready = threading.Event()
        self.model_id = 0
        self.collecting = True
        self.accepted = 0
        self.env_steps_offset = 0
        self.episodes_at_start = 0
        self.iteration_started = self.last_sample = time.monotonic()
        self.intake = Intake(
            self.link,
            self.spec,
            self._accept,
            lambda: self.model_id,
            0,  # only the current model's samples are on-policy
            cfg.training.intake_batch,
            stop,
        )
        self.metrics = NodeMetrics("trainer", METRICS)
        self.last_info: dict[str, float] = {}
        self.clients = 0
        self.paused = False
        self.waiting = ""  # why the node is not training yet although clients seem gone
        self._log = RateLimitedLog(log, cfg.training.log_interval)
        self._saved_updates = 0
        self.blocked = 0  # publishes refused: the weights held NaN or inf
        self.saves = Saves(cfg, run_dir, self)
        if resume is not None:
            self._restore(resume)

    # ---------------------------------------------------------------- intake side

    def _accept(self, exp: Experience) -> None:
        with self.lock:
            if not self.collecting or exp.model_id != self.model_id:
                # model k's batch closed (or k+1 published) between the check and now
                self.intake.rejected["stale_model"] += exp.n
                return
            self.rollout.add(exp.fields)
            self.accepted += exp.n
            self.last_sample = time.monotonic()
        self.data_ready.set()

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
        log.info(
            "training node up: ppo on %s, %d transitions per iteration, run folder %s",
            cfg.env.id,
            cfg.ppo.n_steps_total,
            self.run_dir,
        )
        next_stats = next_log = 0.0
        rates = Rates(samples=self.accepted)
        try:
            while not self.stop.is_set():
                if self._ready():
                    self._iterate()
                else:
                    self.data_ready.wait(0.05)
                    self.data_ready.clear()
                now = time.monotonic()
                if now >= next_stats:
                    next_stats = now + STATS_INTERVAL
                    self._tick(now, rates)
                if now >= next_log:
                    next_log = now + cfg.training.log_interval
                    self._log_progress()
        finally:
            self.stop.set()
            self._pause_clients(False)
            self.intake.join(2.0)
            self.saves.save("final")
            with contextlib.suppress(*TRANSIENT):
                self.link.clear_alive()
            log.info(
                "training node stopped at %d env steps (%d accepted), %d iterations, "
                "%d updates; rejected %s",
                self.env_steps,
                self.accepted,
                self.learner.iterations,
                self.learner.updates,
                dict(self.intake.rejected),
            )

    def _ready(self) -> bool:
        """True when the current iteration should train now (see the module docstring)."""
        p = self.cfg.ppo
        with self.lock:
            have, last = len(self.rollout), self.last_sample
        self.waiting = ""
        if have >= p.n_steps_total:
            return True
        silent = time.monotonic() - last
        if silent < p.client_timeout:
            return False
        need = max(1, math.ceil(p.min_fraction * p.n_steps_total))
        if have >= need:
            log.warning(
                "model %d: training on %d of %d transitions: none arrived for %.0f s "
                "(ppo.client_timeout); %d client(s) connected",
                self.model_id,
                have,
                p.n_steps_total,
                silent,
                self.clients,
            )
            return True
        self.waiting = (
            f"model {self.model_id}: {have}/{p.n_steps_total} transitions, none for "
            f"{silent:.0f} s, {self.clients} client(s) connected; training needs at least "
            f"{need} (ppo.min_fraction={p.min_fraction})"
        )
        self._log.warning("waiting", f"waiting for samples: {self.waiting}")
        return False

    def _iterate(self) -> None:
        """Close model k's batch, train on it, publish model k+1."""
        self._pause_clients(True)
        closed = time.monotonic()
        collect_s = closed - self.iteration_started
        with self.lock:
            self.collecting = False
            parts = self.rollout.take()
        obs = np.concatenate([f["obs"] for f in parts])
        scale = self.learner.reward_scale(np.concatenate([f["disc_return"] for f in parts]))
        batch = self.rollout.compute_returns_and_advantage(parts, scale)
        info = self.learner.update(batch, self._lr_frac())
        self.learner.update_normalizer(obs)  # after the update: it trained with model k's stats
        now = time.monotonic()
        info.update(
            transitions=len(obs),
            reward_scale=scale,
            iteration_seconds=now - self.iteration_started,
        )
        self.last_info = info
        state = self._finite_policy()
        with self.lock:
            self.model_id += state is not None  # else model k stays, its clients sample on
            self.collecting = True
            self.iteration_started = self.last_sample = now
        if state is not None:
            self._publish(state)
        self._pause_clients(False)
        log.debug(
            "iteration %d: collected %d transitions in %.3f s, trained in %.3f s, published in "
            "%.3f s",
            self.learner.iterations,
            len(obs),
            collect_s,
            now - closed,
            time.monotonic() - now,
        )
        every = self.cfg.checkpoint.every
        if every and self.learner.updates // every > self._saved_updates // every:
            self._saved_updates = self.learner.updates
            self.saves.save("periodic")

    def _lr_frac(self) -> float:
        """Linear annealing to 0 over max_steps env steps (when enabled and max_steps > 0)."""
        if not (self.cfg.ppo.anneal_lr and self.cfg.max_steps):
            return 1.0
        return max(0.0, 1.0 - self.env_steps / self.cfg.max_steps)

    def _pause_clients(self, on: bool) -> None:
        if not self.cfg.ppo.pause_clients or on == self.paused:
            return
        try:
            self.link.set_throttle(on, ttl=PAUSE_TTL)
        except TRANSIENT as e:
            log.warning("cannot %s clients (%s)", "pause" if on else "resume", type(e).__name__)
            return
        self.paused = on

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
            "iterations": self.learner.iterations,
        }
        blob = encode_weights_parts(state, self.model_id, meta, self.cfg.training.weights_dtype)
        try:
            self.link.publish_weights(blob, self.model_id)
        except TRANSIENT as e:
            log.warning("cannot publish weights (%s); clients keep polling", type(e).__name__)

    # ---------------------------------------------------------------- stats and commands

    def stats(self) -> dict[str, Any]:
        with self.lock:
            collected = len(self.rollout)
        info = self.last_info
        return {
            "env_steps": self.env_steps,
            "accepted": self.accepted,
            "updates": self.learner.updates,
            "model_id": self.model_id,
            "iterations": self.learner.iterations,
            "collected": collected,
            "buffer": collected,
            "clients": self.clients,
            "throttled": int(self.paused),
            "rejected": sum(self.intake.rejected.values()),
            "rejected_by_reason": json.dumps(dict(self.intake.rejected)),
            "waiting": self.waiting,
            "nonfinite_updates": self.learner.nonfinite_updates,
            "nonfinite_blocked": self.blocked + self.saves.refused,
            **{
                k: round(float(info.get(k, float("nan"))), 6)
                for k in (
                    "loss",
                    "approx_kl",
                    "clipfrac",
                    "entropy",
                    "explained_variance",
                    "lr",
                    "iteration_seconds",
                )
            },
            "time": time.time(),
        }

    def _republish(self) -> None:
        announce_run(self.link, self.cfg, self.run_dir)
        self._publish()

    def _tick(self, now: float, rates: Rates) -> None:
        s = self.stats()
        s.update(rates.update(now, samples=self.accepted))
        clients = exchange_stats(self.link, s, self._command, self._republish)
        if clients is not None:
            self.clients = clients
        self.metrics.set_all(
            {k: v for k, v in s.items() if k in METRICS}, dict(self.intake.rejected)
        )
        self._last_stats = s

    def _log_progress(self) -> None:
        s = getattr(self, "_last_stats", None) or self.stats()
        log.info(
            "env_steps=%d iteration=%d model=%d collected=%d/%d clients=%d samples/s=%s "
            "approx_kl=%s clipfrac=%s entropy=%s explained_var=%s rejected=%s",
            s["env_steps"],
            s["iterations"],
            s["model_id"],
            s["collected"],
            self.cfg.ppo.n_steps_total,
            s["clients"],
            s.get("samples_per_s"),
            s["approx_kl"],
            s["clipfrac"],
            s["entropy"],
            s["explained_variance"],
            dict(self.intake.rejected),
        )

    def _command(self, raw: bytes) -> None:
        run_command(raw, self.link, self.saves, self.stop, self.intake.rejected)

    # ---------------------------------------------------------------- checkpoints

    def checkpoint_state(self, with_buffer: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """Learner (net with normalizer, optimizer, return statistics), RNGs and counters.

        PPO keeps no replay buffer: the transitions of the iteration in progress belong to a
        model that a resumed node never publishes again, so `with_buffer` changes nothing.
        """
        episodes = telemetry_episodes(self.link, self.episodes_at_start)  # not under the lock
        with self.lock:
            state: dict[str, Any] = {
                "policy": self.learner.policy_state(),
                "learner": self.learner.state_dict(),
                "rng": rng_state(),
            }
            counters = {
                "env_steps": self.env_steps,
                "model_id": self.model_id,
                "updates": self.learner.updates,
                "iterations": self.learner.iterations,
                "accepted": self.accepted,
                "episodes": episodes,
            }
        state["node"] = dict(counters)
        return state, counters

    def restore_state(self, state: dict[str, Any], summary: dict[str, Any]) -> None:
        counters = state.get("node") or summary
        self.learner.load_state_dict(state["learner"])
        set_rng_state(state["rng"])
        self.env_steps_offset = int(counters["env_steps"])
        self.model_id = int(counters["model_id"]) + 1  # a fresh id: old samples stay stale
        self.accepted = int(counters["accepted"])
        self.episodes_at_start = int(counters.get("episodes") or 0)
        self._saved_updates = self.learner.updates

    def _restore(self, folder: Path) -> None:
        summary = self.saves.restore(folder)
        log.info("resumed from %s: %s; next model id %d", folder, describe(summary), self.model_id)
