"""What the live page shows besides the episode curves: the model and its age, the learner's
statistics, progress toward `max_steps`, a table of the clients and the rejects by reason.

Pure code (no Redis, no HTTP): the node feeds `LiveWatch.observe` once a second with the
training node's stats hash and the clients' heartbeats (both read-only), and the web side
asks for `payload`. Everything read is a claim: a heartbeat comes from any holder of the
client password, so numbers are parsed, bounded and never trusted to be well-formed; client
ids stay plain strings that the page only ever sets as text.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from soulsai.telemetry.downsample import bucket_edges, reduce_buckets
from soulsai.telemetry.stats import EpisodeStats

MAX_NUMBER = 1e15  # larger (or non-finite) claims are dropped
MAX_CLIENT_ROWS = 200  # rows of the client table (live clients first)
MAX_REASONS = 64  # reject reasons shown per node
RATE_WINDOW = 30.0  # seconds of heartbeats a client's steps/s is measured over
HISTORY = 3600  # learner samples kept (once a second: an hour, then every other one dropped)
REASON_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

# The learner statistics each algorithm's training node publishes in its stats hash, as
# (field, label); `counter` fields are shown as numbers only, the others also as a curve.
LEARNER: dict[str, tuple[tuple[str, str], ...]] = {
    "dqn": (
        ("loss", "loss"),
        ("q_mean", "mean Q"),
        ("epsilon", "epsilon"),
        ("buffer", "replay size"),
        ("updates", "updates"),
    ),
    "r2d2": (
        ("loss", "loss"),
        ("q_mean", "mean Q"),
        ("epsilon", "epsilon"),
        ("buffer", "replay chunks"),
        ("updates", "updates"),
    ),
    "ppo": (
        ("approx_kl", "KL"),
        ("entropy", "entropy"),
        ("clipfrac", "clip fraction"),
        ("explained_variance", "explained variance"),
        ("lr", "learning rate"),
        ("loss", "loss"),
        ("iterations", "iterations"),
        ("updates", "updates"),
    ),
}
COUNTERS = frozenset({"buffer", "updates", "iterations"})


def number(value: Any) -> float | None:
    """A finite number within MAX_NUMBER from a hash field or JSON value, else None."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        v = float(value)
    except (ValueError, OverflowError):
        return None
    return v if math.isfinite(v) and abs(v) <= MAX_NUMBER else None


def reasons(raw: Any) -> dict[str, int]:
    """Rejects by reason from the training node's `rejected_by_reason` (JSON text)."""
    try:
        data = json.loads(raw) if isinstance(raw, (str, bytes)) and len(raw) < 65536 else {}
    except (ValueError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    out: dict[str, int] = {}
    for k, v in data.items():
        n = number(v)
        if isinstance(k, str) and REASON_RE.match(k) and n is not None and n > 0:
            out[k] = int(n)
            if len(out) >= MAX_REASONS:
                break
    return out


@dataclass
class ClientSeen:
    """One client as the telemetry node saw its heartbeats."""

    beat_at: float  # local time the heartbeat last changed
    beat_time: Any = None  # the heartbeat's own `time` field (changes with every beat)
    steps: deque[tuple[float, float]] = field(default_factory=deque)  # (local time, steps)
    info: dict[str, float | None] = field(default_factory=dict)

    def rate(self) -> float | None:
        """Env steps per second over the heartbeats of the last RATE_WINDOW seconds."""
        if len(self.steps) < 2:
            return None
        (t0, s0), (t1, s1) = self.steps[0], self.steps[-1]
        return max(0.0, (s1 - s0) / (t1 - t0)) if t1 > t0 else None


class LiveWatch:
    """Model, learner and clients as of the last `observe`; `lock` guards all of it."""

    def __init__(self, algo: str, max_steps: int) -> None:
        self.algo = algo
        self.max_steps = max_steps
        self.lock = threading.Lock()
        self.trainer: dict[str, float | None] = {}
        self.trainer_rejects: dict[str, int] = {}
        self.model_id: int | None = None
        self.model_since: float | None = None  # local time the model id was first seen
        self.trainer_at: float | None = None  # local time the stats hash last changed
        self._trainer_time: Any = None
        self.clients: dict[str, ClientSeen] = {}
        self.live: set[str] = set()
        keys = [k for k, _ in LEARNER.get(algo, ()) if k not in COUNTERS]
        self.history_keys = keys
        self.history: dict[str, list[float]] = {k: [] for k in ("t", *keys)}

    def observe(self, now: float, trainer: dict[str, Any], beats: dict[str, dict]) -> None:
        """Take in one reading of the training node's stats hash and the live heartbeats."""
        with self.lock:
            self._observe_trainer(now, trainer)
            self.live = set(beats)
            for cid, beat in beats.items():
                self._observe_client(now, cid, beat if isinstance(beat, dict) else {})
            # forget clients gone for good beyond the table's size (ids are unbounded claims)
            if len(self.clients) > 2 * MAX_CLIENT_ROWS:
                gone = sorted(
                    (c for c in self.clients if c not in self.live),
                    key=lambda c: self.clients[c].beat_at,
                )
                for cid in gone[: len(self.clients) - 2 * MAX_CLIENT_ROWS]:
                    del self.clients[cid]

    def _observe_trainer(self, now: float, trainer: dict[str, Any]) -> None:
        if not trainer:
            return
        if trainer.get("time") != self._trainer_time:
            self._trainer_time, self.trainer_at = trainer.get("time"), now
        names = {k for k, _ in LEARNER.get(self.algo, ())} | {"env_steps", "model_id"}
        self.trainer = {k: number(trainer.get(k)) for k in names}
        self.trainer_rejects = reasons(trainer.get("rejected_by_reason"))
        mid = self.trainer["model_id"]
        if mid is not None and mid >= 0 and int(mid) != self.model_id:
            self.model_id, self.model_since = int(mid), now
        if self.history_keys and self.trainer_at == now:
            self.history["t"].append(now)
            for k in self.history_keys:
                v = self.trainer.get(k)
                self.history[k].append(math.nan if v is None else v)
            if len(self.history["t"]) > HISTORY:
                self.history = {k: v[::2] for k, v in self.history.items()}

    def _observe_client(self, now: float, cid: str, beat: dict) -> None:
        seen = self.clients.get(cid)
        if seen is None:
            seen = self.clients[cid] = ClientSeen(beat_at=now)
        if beat.get("time") != seen.beat_time:
            seen.beat_time, seen.beat_at = beat.get("time"), now
        seen.info = {
            k: number(beat.get(k))
            for k in ("model_id", "steps", "episodes", "dropped", "dropped_episodes", "discarded")
        }
        steps = seen.info["steps"]
        if steps is not None:
            if seen.steps and steps < seen.steps[-1][1]:
                seen.steps.clear()  # a restarted client counts from 0 again
            seen.steps.append((now, steps))
            while len(seen.steps) > 2 and now - seen.steps[0][0] > RATE_WINDOW:
                seen.steps.popleft()

    # ------------------------------------------------------------------ reading

    def payload(
        self, now: float, stats: EpisodeStats, env_steps: int, rate: float | None, points: int
    ) -> dict[str, Any]:
        """The page's model, learner (curves down-sampled to `points`), progress, clients and
        rejects sections."""
        received = episodes_per_client(stats)
        with self.lock:
            model_age = None if self.model_since is None else round(now - self.model_since, 1)
            trainer_age = None if self.trainer_at is None else round(now - self.trainer_at, 1)
            learner = [
                {"key": k, "label": label, "value": self.trainer.get(k)}
                for k, label in LEARNER.get(self.algo, ())
            ]
            history = {k: np.asarray(v) for k, v in self.history.items()}
            clients = self._client_rows(now, received)
            trainer_rejects = dict(self.trainer_rejects)
        return {
            "algo": self.algo,
            "model": {"id": self.model_id, "age_s": model_age, "trainer_age_s": trainer_age},
            "learner": learner,
            "learner_history": _downsample(history, points),
            "progress": progress(env_steps, self.max_steps, rate),
            "clients": clients,
            "trainer_rejects": trainer_rejects,
        }

    def _client_rows(self, now: float, received: dict[str, int]) -> list[dict[str, Any]]:
        # live first, then those whose episodes arrived (a flood of made-up heartbeats must
        # not push the real clients off the table), then by id
        ranked = sorted(self.clients, key=lambda c: (c not in self.live, -received.get(c, 0), c))
        order = ranked[:MAX_CLIENT_ROWS]
        rows = []
        for cid in order:
            seen = self.clients[cid]
            info = seen.info
            mid = info.get("model_id")
            lag = None
            if mid is not None and self.model_id is not None:
                lag = max(0, self.model_id - int(mid))
            dropped = [info.get(k) for k in ("dropped", "dropped_episodes")]
            discarded = info.get("discarded")
            rows.append(
                {
                    "id": cid,
                    "live": cid in self.live,
                    "steps_per_s": _round(seen.rate()),
                    "steps": info.get("steps"),
                    "episodes": received.get(cid, 0),
                    "heartbeat_age_s": round(now - seen.beat_at, 1),
                    "model_id": None if mid is None else int(mid),
                    "model_lag": lag,
                    "dropped": int(sum(v for v in dropped if v is not None)),
                    "discarded": None if discarded is None else int(discarded),
                }
            )
        return rows


def progress(env_steps: int, max_steps: int, rate: float | None) -> dict[str, Any]:
    """Fraction of `max_steps` done and the time left at `rate` (None: no limit or no rate)."""
    if max_steps <= 0:
        return {"max_steps": 0, "fraction": None, "eta_s": None}
    left = max(0, max_steps - env_steps)
    eta = None
    if left == 0:
        eta = 0.0
    elif rate is not None and rate > 0:
        eta = round(left / rate, 1)
    return {"max_steps": max_steps, "fraction": min(1.0, env_steps / max_steps), "eta_s": eta}


def episodes_per_client(stats: EpisodeStats) -> dict[str, int]:
    """Episode records received from each client id."""
    with stats.lock:
        col = stats.view("client")
        ids = list(stats.clients)
    if col is None or not len(col):
        return {}
    counts = np.bincount(col[np.isfinite(col)].astype(np.int64), minlength=len(ids))
    return {cid: int(counts[i]) for i, cid in enumerate(ids)}


def best_markers(stats: EpisodeStats, x_key: str) -> list[dict[str, Any]]:
    """Best-model saves placed on the episode panels' x axis (the x of the last episode
    received by the time of the save), each with its model id."""
    with stats.lock:
        events = [e for e in stats.events if e.kind == "best"]
        t, x = stats.view("t"), stats.view(x_key)
    if not events or t is None or x is None or not len(t):
        return []
    out = []
    for e in events:
        i = int(np.searchsorted(t, e.time, side="right")) - 1
        if 0 <= i < len(x) and math.isfinite(x[i]):
            out.append({"x": float(x[i]), "model_id": e.model_id, "title": e.title})
    return out


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def _downsample(cols: dict[str, np.ndarray], points: int) -> dict[str, list[float | None]]:
    """Bucket means (time: the bucket's last) of equally long columns, at most `points`."""
    edges = bucket_edges(len(cols["t"]), points)
    if len(edges) < 2:
        return {k: [] for k in cols}
    out = {}
    for k, v in cols.items():
        reduced = reduce_buckets(v, edges, "last" if k == "t" else "mean")
        out[k] = [float(x) if math.isfinite(x) else None for x in reduced.tolist()]
    return out
