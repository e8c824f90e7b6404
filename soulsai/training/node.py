"""The training node: one shell for every algorithm, with the algorithm as a small driver.

The shell does what a node does whatever it learns: it opens the link, announces the run,
runs the intake thread, keeps the counters (`model_id`, `accepted`, env steps), publishes
weights (never non-finite ones) and publishes them again when Redis lost them, exchanges
stats and serves /metrics, carries out commands, frames checkpoints and resumes from them,
and stops cleanly. The driver for `cfg.algo` (`soulsai.training.registry`) does the rest:
keeping accepted samples, one learning step, its stats and its checkpoint parts
(`soulsai.training.driver`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from soulsai.config import Config
from soulsai.envs import env_spaces
from soulsai.logs import RateLimitedLog
from soulsai.metrics import TRAINER_REJECTS, NodeMetrics, run_labels
from soulsai.scalars import WandbOptions, open_scalars
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
from soulsai.training.registry import DRIVERS
from soulsai.training.saves import Saves, describe
from soulsai.transport import RedisTarget, TrainerLink, open_link
from soulsai.transport.links import TRANSIENT
from soulsai.transport.weights import encode_weights_parts

log = logging.getLogger(__name__)

SCALARS_EVERY = 2.0  # seconds between two points of the learner stats in TensorBoard / W&B
NOT_SCALARS = ("time", "env_steps")  # a clock, and the x axis itself

SHELL_METRICS = {
    "env_steps": "env steps received (accepted or stale)",
    "updates": "gradient updates",
    "model_id": "newest published model id",
    "clients": "connected sampling clients (live heartbeats)",
    "queued": "experience messages waiting in Redis",
    "client_dropped": "experience messages the live clients dropped (full outbox or queue)",
    "nonfinite_blocked": "publishes and checkpoints refused: the model held NaN or inf",
}
# Stats that only grow within a process: Prometheus counters (`..._total`; Grafana takes their
# rate()); every other metric is a gauge. Rates are not exported: rate() of the counters.
COUNTERS = frozenset(
    {"env_steps", "accepted", "updates", "iterations", "nonfinite_updates", "nonfinite_blocked"}
)
# every metric a training node may export, whatever its algorithm (for dashboards and tests)
METRICS = {
    k: v
    for d in DRIVERS.values()
    for k, v in {**SHELL_METRICS, **d.metrics}.items()
    if not k.endswith("_per_s")
}


def node_metrics(metrics: dict[str, str], labels: dict[str, str]) -> NodeMetrics:
    """The training node's /metrics: `metrics` split into counters and gauges (a driver's
    `..._per_s` stats are left to rate()), every known reject reason at 0 from the start."""
    counters = {k: v for k, v in metrics.items() if k in COUNTERS}
    gauges = {k: v for k, v in metrics.items() if k not in COUNTERS and not k.endswith("_per_s")}
    return NodeMetrics("trainer", gauges, counters, TRAINER_REJECTS, labels)


class TrainingNode:
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
        # re-entrant: a driver's checkpoint part may merge what the intake left under it
        self.lock = threading.RLock()
        self.data_ready = threading.Event()
        self.model_id = 0
        self.accepted = 0
        self.env_steps_offset = 0
        self.episodes_at_start = 0  # the telemetry node's count may lag after a resume
        self.clients = 0
        self.log = log
        self.blocked = 0  # publishes refused: the weights held NaN or inf
        self._log = RateLimitedLog(log, cfg.training.log_interval)
        self.driver = DRIVERS[cfg.algo](self, *env_spaces(cfg.env))
        self.learner = self.driver.learner
        hooks = self.driver.hooks
        self.intake = Intake(
            self.link,
            self.driver.spec,
            hooks.accept,
            lambda: self.model_id,
            hooks.max_delay,
            cfg.training.intake_batch,
            stop,
            accept_rows=hooks.accept_rows,
            shares=hooks.shares,
        )
        labels = run_labels(run_dir.name, cfg.algo, cfg.env.id, cfg.preset)
        self.metrics = node_metrics({**SHELL_METRICS, **self.driver.metrics}, labels)
        self._last_stats: dict[str, Any] | None = None
        self.scalars = open_scalars(  # learner stats as TensorBoard / W&B scalars
            run_dir,
            "training",
            tensorboard=cfg.training.tensorboard,
            wandb=WandbOptions(cfg.wandb.project, cfg.wandb.mode, cfg.wandb.entity)
            if cfg.wandb.enabled
            else None,
            config=cfg.model_dump(),
            prefix="trainer",
        )
        self._next_scalars = 0.0
        self.saves = Saves(cfg, run_dir, self)
        if resume is not None:
            self._restore(resume)
        self._saved_updates = self.learner.updates  # the last periodic checkpoint's

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
        self.publish()
        self.intake.start()
        up = self.driver.note("up")
        log.info(
            "training node up: %s on %s%s, run folder %s", cfg.algo, cfg.env.id, up, self.run_dir
        )
        next_stats = next_log = 0.0
        rates = Rates(**self._rate_counters())
        try:
            while not self.stop.is_set():
                self.driver.step()
                now = time.monotonic()
                if now >= next_stats:
                    next_stats = now + STATS_INTERVAL
                    self._tick(now, rates)
                if now >= next_log:
                    next_log = now + cfg.training.log_interval
                    self._log_progress()
        finally:
            self.stop.set()
            self.driver.release()
            self.intake.join(2.0)
            self.saves.save("final")
            self._write_scalars(self.stats())  # the last point, however short the run
            self.scalars.close()
            with contextlib.suppress(*TRANSIENT):
                self.link.clear_alive()
            stopped = self.driver.note("stopped")
            log.info("training node stopped at %d env steps%s", self.env_steps, stopped)

    def learned(self) -> None:
        """The learner's updates moved on: write the periodic checkpoint when one is due."""
        every = self.cfg.checkpoint.every
        if every and self.learner.updates // every > self._saved_updates // every:
            self._saved_updates = self.learner.updates
            self.saves.save("periodic")

    # ---------------------------------------------------------------- publishing

    def finite_policy(self) -> dict[str, torch.Tensor] | None:
        """The policy's tensors, or None (counted) when any holds NaN or inf."""
        state = publishable(self.learner.policy_state(), self._log)
        self.blocked += state is None
        return state

    def publish(self, state: dict[str, torch.Tensor] | None = None) -> None:
        """Broadcast `state` (default: the learner's policy) as model `model_id`."""
        state = state if state is not None else self.finite_policy()
        if state is None:
            return
        meta = {
            "env_steps": self.env_steps,
            "num_clients": max(1, self.clients),
            "updates": self.learner.updates,
            **self.driver.weights_meta(),
        }
        blob = encode_weights_parts(state, self.model_id, meta, self.cfg.training.weights_dtype)
        try:
            self.link.publish_weights(blob, self.model_id)
        except TRANSIENT as e:
            log.warning("cannot publish weights (%s); will retry", type(e).__name__)

    def _republish(self) -> None:
        announce_run(self.link, self.cfg, self.run_dir)
        self.publish()

    # ---------------------------------------------------------------- stats and commands

    def stats(self) -> dict[str, Any]:
        return {
            "env_steps": self.env_steps,
            "accepted": self.accepted,
            "updates": self.learner.updates,
            "model_id": self.model_id,
            **self.driver.stats(),
            "clients": self.clients,
            "rejected": sum(self.intake.rejected.values()),
            "rejected_by_reason": json.dumps(dict(self.intake.rejected)),
            "nonfinite_updates": self.learner.nonfinite_updates,
            "nonfinite_blocked": self.blocked + self.saves.refused,
            "time": time.time(),
        }

    def _rate_counters(self) -> dict[str, float]:
        counters = {"samples": self.accepted, "updates": self.learner.updates}
        return {k: counters[k] for k in self.driver.rates}

    def _tick(self, now: float, rates: Rates) -> None:
        s = self.stats()
        s.update(rates.update(now, **self._rate_counters()))
        clients = exchange_stats(self.link, s, self._command, self._republish)
        if clients is not None:
            self.clients = clients
        self.metrics.set_all(s, dict(self.intake.rejected))
        self._last_stats = s
        if now >= self._next_scalars:
            self._next_scalars = now + SCALARS_EVERY
            self._write_scalars(s)

    def _write_scalars(self, s: dict[str, Any]) -> None:
        """The learner's stats (every number of them) as TensorBoard / W&B scalars."""
        self.scalars.write({k: v for k, v in s.items() if k not in NOT_SCALARS}, s["env_steps"])

    def _log_progress(self) -> None:
        """The driver's progress line, filled in from the last stats round (`rejected` by
        reason; a rate not measured yet is None)."""
        s = self._last_stats or self.stats()
        values = {"client_dropped": 0, **s, "rejected": dict(self.intake.rejected)}
        log.info(self.driver.progress.format_map(defaultdict(lambda: None, values)))

    def _command(self, raw: bytes) -> None:
        run_command(raw, self.link, self.saves, self.stop, self.intake.rejected)

    # ---------------------------------------------------------------- checkpoints

    def checkpoint_state(self, with_buffer: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """The node's state as checkpoint parts, and its counters (see training.saves)."""
        episodes = telemetry_episodes(self.link, self.episodes_at_start)  # not under the lock
        with self.lock:
            parts, extra = self.driver.checkpoint(with_buffer)
            state: dict[str, Any] = {
                "policy": self.learner.policy_state(),
                "learner": self.learner.state_dict(),
                "rng": {**rng_state(), **parts.pop("rng", {})},
                **parts,
            }
            counters = {
                "env_steps": self.env_steps,
                "model_id": self.model_id,
                "updates": self.learner.updates,
                "accepted": self.accepted,
                "episodes": episodes,
                **extra,
            }
        state["node"] = dict(counters)
        return state, counters

    def restore_state(self, state: dict[str, Any], summary: dict[str, Any]) -> None:
        """Continue from a checkpoint: learner, RNGs, counters, then the driver's parts."""
        counters = state.get("node") or summary
        self.learner.load_state_dict(state["learner"])
        set_rng_state(state["rng"])
        self.env_steps_offset = int(counters["env_steps"])
        self.model_id = int(counters["model_id"]) + 1  # a fresh id: old samples stay stale
        self.accepted = int(counters["accepted"])
        self.episodes_at_start = int(counters.get("episodes") or 0)
        self.driver.restore(state, counters)

    def _restore(self, folder: Path) -> None:
        summary = self.saves.restore(folder)
        log.info(
            "resumed from %s: %s; %snext model id %d",
            folder,
            describe(summary),
            self.driver.note("resumed"),
            self.model_id,
        )
