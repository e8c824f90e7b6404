"""What every training node does besides learning, whatever the algorithm.

Announce the run (effective config and run folder), publish counters to Redis and /metrics,
and carry out the commands queued for the training node (shutdown, quicksave, save_best).
Checkpoint writing itself lives in `soulsai.training.saves`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from soulsai.config import Config
from soulsai.config.trust import published_json
from soulsai.errors import ProtocolError
from soulsai.metrics import WindowRate
from soulsai.training.checkpoint import first_nonfinite
from soulsai.training.saves import Saves, answer_json
from soulsai.transport import TrainerLink
from soulsai.transport.commands import decode_command
from soulsai.transport.links import TRANSIENT, as_int

log = logging.getLogger(__name__)

TRAINER_COMMANDS = frozenset({"save_best", "quicksave", "shutdown"})
STATS_INTERVAL = 0.5  # seconds between stats rounds (also how often commands are read)


def publishable(state: dict[str, Any], rlog: Any) -> dict[str, Any] | None:
    """`state` (a policy's tensors), or None (logged through the rate-limited `rlog`) when any
    holds NaN or inf: clients would reject such weights and keep the last good ones."""
    bad = first_nonfinite(state)
    if bad is None:
        return state
    rlog.warning("nonfinite", f"weights NOT published: {bad} holds NaN or inf")
    return None


def announce_run(link: TrainerLink, cfg: Config, run_dir: Path) -> None:
    """Publish the effective config (clients read it) and where the run folder is."""
    link.publish_config(
        published_json(cfg),  # data only: no code-bearing keys, no credentials
        {
            "run_dir": str(run_dir.resolve()),
            "algo": cfg.algo,
            "env": cfg.env.id,
            "started": str(time.time()),
        },
    )


class Rates:
    """Per-second rates of growing counters over the last `RATE_WINDOW` seconds (a
    `WindowRate` each): never 0 while a counter grows in bursts, None before two samples."""

    def __init__(self, **counters: float) -> None:
        now = time.monotonic()
        self.rates = {k: WindowRate() for k in counters}
        for k, v in counters.items():
            self.rates[k].add(now, v)

    def update(self, now: float, **counters: float) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for k, v in counters.items():
            rate = self.rates.setdefault(k, WindowRate()).add(now, v)
            out[f"{k}_per_s"] = None if rate is None else round(rate, 1)
        return out


def exchange_stats(
    link: TrainerLink,
    stats: dict[str, Any],
    on_command: Callable[[bytes], None],
    republish: Callable[[], None],
) -> int | None:
    """One stats round: add `queued`, publish `stats`, run the queued trainer commands, and
    publish config and weights again (`republish`) if Redis lost them, e.g. after a restart.

    Returns the number of connected clients (live heartbeats), or None while Redis is away.
    """
    try:
        beats = link.client_heartbeats()
        clients = len(beats)
        # experience the clients had to drop (full outbox, or Redis's queue trimmed)
        stats["client_dropped"] = sum(as_int(b.get("dropped")) for b in beats.values())
        stats["queued"] = link.queued_samples()
        if not link.set_stats(stats):
            log.warning("config or weights missing in Redis (restarted?): publishing them again")
            republish()
        for raw in link.pop_commands():
            on_command(raw)
    except TRANSIENT as e:
        log.warning("cannot reach Redis for stats (%s)", type(e).__name__)
        return None
    return clients


def run_command(
    raw: bytes,
    link: TrainerLink,
    saves: Saves,
    stop: threading.Event,
    rejected: Counter[str],
) -> None:
    """Decode and carry out one trainer command; a bad one is counted as command_<reason>."""
    try:
        cmd = decode_command(raw, TRAINER_COMMANDS)
    except ProtocolError as e:
        rejected[f"command_{e.reason}"] += 1
        log.warning("rejected command: %s", e)
        return
    if cmd["cmd"] == "shutdown":
        log.info("shutdown command received")
        stop.set()
        return
    answer = saves.on_command(cmd)  # quicksave or save_best
    if answer is not None:
        try:
            link.reply(cmd["reply"], answer_json(answer))
        except TRANSIENT as e:
            log.warning("cannot answer %s (%s)", cmd["cmd"], type(e).__name__)


def telemetry_episodes(link: TrainerLink, floor: int = 0) -> int:
    """Episodes the telemetry node has counted (for checkpoints), at least `floor`."""
    try:
        seen = int(link.stats("telemetry").get("episodes") or 0)
    except (*TRANSIENT, ValueError):
        seen = 0
    return max(seen, floor)
