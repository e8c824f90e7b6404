"""Episode statistics: append-only columns, moving averages, wins, best-model debounce (the
down-sampling of what they hold is in downsample.py). Pure code (no Redis, no HTTP), shared by
the node, the figure and the web side.

Columns only ever grow at the end, so a reader that took `view(key)` under the lock keeps a
consistent array even while the node appends more episodes.
"""

from __future__ import annotations

import math
import operator
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from soulsai.config.schema import TelemetryConfig
from soulsai.metrics import RATE_WINDOW, WindowRate

AVG = "_avg"  # suffix of a moving-average series: return -> return_avg
BASE_SERIES = ("episode", "env_steps", "wall_time", "time")  # always present
MAX_INFO_SERIES = 64  # distinct info.<key> series kept at most
OPS: dict[str, Callable[[float, float], bool]] = {
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
    "eq": operator.eq,
    "ne": operator.ne,
}


def stream_seconds(stream_id: str | None) -> float | None:
    """Redis stream ids start with the server's clock in ms: one clock for every client."""
    if not stream_id:
        return None
    head = str(stream_id).split("-", 1)[0]
    return int(head) / 1000.0 if head.isdigit() else None


class Columns:
    """Float64 columns of equal length; a key first seen late is NaN before that."""

    def __init__(self, capacity: int = 1024) -> None:
        self._cap = capacity
        self._cols: dict[str, np.ndarray] = {}
        self.n = 0

    def append(self, row: dict[str, float]) -> None:
        if self.n == self._cap:
            self._cap *= 2
            for k, old in self._cols.items():
                new = np.full(self._cap, np.nan)
                new[: self.n] = old[: self.n]
                self._cols[k] = new  # readers holding `old` keep a valid array
        for k, v in row.items():
            col = self._cols.get(k)
            if col is None:
                col = self._cols[k] = np.full(self._cap, np.nan)
            col[self.n] = v
        self.n += 1

    def view(self, key: str) -> np.ndarray | None:
        col = self._cols.get(key)
        return None if col is None else col[: self.n]

    def names(self) -> list[str]:
        return list(self._cols)


class BestTracker:
    """Best moving average so far, and when to ask the training node to save the model.

    A `save_best` is due when the current moving average beats the value of the last save,
    at least `interval` episodes passed since it, and the episodes come from a newer model
    than at that save (the same weights are never written twice), so a rising curve saves at
    most every `interval` episodes and once per model, and the saved model is the current one.
    """

    def __init__(self, interval: int) -> None:
        self.interval = interval
        self.best = -math.inf
        self.saved = -math.inf
        self.saved_episode = -math.inf
        self.saved_model: int | None = None  # newest model id seen at the last save

    def update(self, value: float, episode: int, model_id: int | None = None) -> bool:
        self.best = max(self.best, value)
        if model_id is not None and model_id == self.saved_model:
            return False  # the training node still has the weights it saved then
        if value > self.saved and episode - self.saved_episode >= self.interval:
            self.saved, self.saved_episode, self.saved_model = value, episode, model_id
            return True
        return False


@dataclass
class Event:
    """An annotation: a best-model save, a client joining or leaving."""

    time: float  # unix seconds
    kind: str  # best | join | leave
    title: str
    text: str
    model_id: int | None = None  # best: the newest model id in the episodes at the save


class EpisodeStats:
    """Every episode as a row of numbers; moving averages; wins; best; events.

    `lock` guards all state; the node holds it while adding, HTTP handlers while reading.
    """

    def __init__(self, cfg: TelemetryConfig, target_return: float | None = None) -> None:
        self.cfg = cfg
        self.window = cfg.moving_average
        self.target_return = target_return
        self.lock = threading.RLock()
        self.cols = Columns()
        self._recent: dict[str, deque[float]] = {}
        self.clients: list[str] = []
        self._client_code: dict[str, int] = {}
        self.best = BestTracker(cfg.best_interval)
        self.model_id: int | None = None  # the newest model id any episode ran with
        self.events: list[Event] = []
        self._announced: set[str] = set()
        self._info_keys: set[str] = set()
        self.solved = False
        self.best_return: float | None = None  # best moving-average return (summary.json)
        self._t_last = -math.inf

    # ------------------------------------------------------------------ adding

    def add(self, rec: dict[str, Any]) -> None:
        """Add one episode record (as written to episodes.jsonl, also when loaded from it:
        a `saved_best` mark restores when the best model was last saved)."""
        with self.lock:
            t = self._time(rec)
            self.cols.append(self._row(rec, t))
            model = _model_id(rec.get("model_id"))
            if model is not None and (self.model_id is None or model > self.model_id):
                self.model_id = model
            rolling = self.rolling("return")
            if rolling is not None:
                self.best_return = max(self.best_return or -math.inf, rolling)
                target = self.target_return
                self.solved = self.solved or (target is not None and rolling >= target)
            value = self.rolling(self.cfg.best_key)
            if value is not None:
                self.best.best = max(self.best.best, value)
            marked = _num(rec.get("saved_best"))
            if not math.isnan(marked):
                episode = int(rec.get("episode") or self.n)
                model = _model_id(rec.get("saved_best_model_id"))
                self.best.saved, self.best.saved_episode = marked, episode
                self.best.saved_model = model
                self.events.append(_best_event(t, marked, episode, self.cfg.best_key, model))

    def best_due(self, rec: dict[str, Any]) -> float | None:
        """Called after a batch with its last record: the moving average to send with a
        `save_best` command if one is due now (and `rec` gets the `saved_best` and
        `saved_best_model_id` marks). One decision per batch, since the training node can only
        save the weights it has now; none while no newer model ran since the last save."""
        with self.lock:
            value = self.rolling(self.cfg.best_key)
            episode = int(rec.get("episode") or self.n)
            if value is None or not self.best.update(value, episode, self.model_id):
                return None
            rec["saved_best"] = value
            rec["saved_best_model_id"] = self.model_id
            event = _best_event(self._t_last, value, episode, self.cfg.best_key, self.model_id)
            self.events.append(event)
            return value

    def _time(self, rec: dict[str, Any]) -> float:
        """Grafana's time axis: when Redis received the record (its stream id), kept monotonic
        even if a replacement Redis's clock is behind; the client's clock as a fallback."""
        t = stream_seconds(rec.get("stream_id")) or _num(rec.get("time"))
        if not math.isnan(t):
            self._t_last = max(self._t_last, t)
        return self._t_last if self._t_last > -math.inf else 0.0

    def _row(self, rec: dict[str, Any], t: float) -> dict[str, float]:
        row: dict[str, float] = {"t": t}
        for key in BASE_SERIES:
            row[key] = _num(rec.get(key))
        client = str(rec.get("client_id", ""))
        if client not in self._client_code:
            self._client_code[client] = len(self.clients)
            self.clients.append(client)
            if client not in self._announced:
                self._announced.add(client)
                self.events.append(Event(t, "join", "client joined", client))
        row["client"] = float(self._client_code[client])
        for key in self.metric_keys(rec):
            self._with_average(row, key, _num(rec.get(key)))
        wins = self.cfg.wins
        if wins is not None and _is_num(rec.get(wins.key)):
            won = OPS[wins.op](float(rec[wins.key]), wins.threshold)
            self._with_average(row, "wins", 1.0 if won else 0.0)
        return row

    def metric_keys(self, rec: dict[str, Any]) -> list[str]:
        """Configured metrics, plus env info keys (the first MAX_INFO_SERIES seen: a client
        sending new key names in every record must not grow memory without bound)."""
        keys = list(self.cfg.metrics)
        if self.cfg.info_metrics:
            for k in rec:
                if not k.startswith("info.") or k in keys:
                    continue
                if k not in self._info_keys and len(self._info_keys) < MAX_INFO_SERIES:
                    self._info_keys.add(k)
                if k in self._info_keys:
                    keys.append(k)
        return keys

    def _with_average(self, row: dict[str, float], key: str, value: float) -> None:
        row[key] = value
        if math.isnan(value):
            return
        recent = self._recent.setdefault(key, deque(maxlen=self.window))
        recent.append(value)
        row[key + AVG] = math.fsum(recent) / len(recent)

    def note_client(self, client: str, joined: bool, when: float) -> None:
        """A client's heartbeat appeared or expired. A client's first episode also counts as
        its join, so a join is noted once whichever comes first."""
        with self.lock:
            if joined == (client in self._announced):
                return
            if joined:
                self._announced.add(client)
            else:
                self._announced.discard(client)
            kind, title = ("join", "client joined") if joined else ("leave", "client left")
            self.events.append(Event(when, kind, title, client))

    # ------------------------------------------------------------------ reading

    @property
    def n(self) -> int:
        return self.cols.n

    def view(self, key: str) -> np.ndarray | None:
        with self.lock:
            return self.cols.view(key)

    def series_names(self) -> list[str]:
        with self.lock:
            return [k for k in self.cols.names() if k not in ("t", "client")]

    def latest(self, key: str) -> float | None:
        col = self.view(key)
        if col is None or not len(col):
            return None
        finite = col[np.isfinite(col)]
        return float(finite[-1]) if len(finite) else None

    def rolling(self, key: str) -> float | None:
        """Mean of the last `moving_average` values; None until the window is full."""
        recent = self._recent.get(key)
        if recent is None or len(recent) < self.window:
            return None
        return math.fsum(recent) / len(recent)

    def best_value(self) -> float | None:
        return None if self.best.best == -math.inf else self.best.best

    def client_codes(self, clients: Iterable[str]) -> np.ndarray:
        """The values of column `client` that stand for these clients. Readers take them with
        `view("client")` under the lock and match (np.isin) outside it."""
        with self.lock:
            codes = [self._client_code[c] for c in clients if c in self._client_code]
        return np.asarray(codes, dtype=float)


def _best_event(t: float, value: float, episode: int, key: str, model_id: int | None) -> Event:
    text = f"{key}{AVG} {value:.6g} at episode {episode}"
    if model_id is None:
        return Event(t, "best", "best model saved", text)
    title = f"best model saved (model {model_id})"
    return Event(t, "best", title, f"{text}, model {model_id}", model_id)


def _model_id(v: Any) -> int | None:
    """A model id from a record (episodes.jsonl is read back too): a non-negative int."""
    return v if type(v) is int and v >= 0 else None


def _is_num(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _num(v: Any) -> float:
    return float(v) if _is_num(v) else math.nan


class SystemSeries:
    """Samples over wall time (env steps, steps/s, connected clients), bounded in memory:
    when full, every other sample is dropped, so old history stays at a coarser resolution.
    Steps/s is the smoothed rate (`WindowRate`, env steps over the last 30 s), not the
    difference of two samples: the training node's count grows in bursts, and that difference
    read 0 about every other second."""

    KEYS = ("env_steps", "steps_per_s", "clients")

    def __init__(self, capacity: int = 20000, window: float = RATE_WINDOW) -> None:
        self.capacity = capacity
        self.lock = threading.Lock()
        self.t: list[float] = []
        self.values: dict[str, list[float]] = {k: [] for k in self.KEYS}
        self.rate = WindowRate(window)

    def sample(
        self, now: float, env_steps: int, clients: int, counter: float | None = None
    ) -> None:
        """One sample at `now`; `counter` is the training node's own env-step count for the
        rate (default `env_steps`): it may go back when that node restarts."""
        with self.lock:
            sps = self.rate.add(now, env_steps if counter is None else counter)
            self.t.append(now)
            row = (env_steps, math.nan if sps is None else sps, clients)
            for k, v in zip(self.KEYS, row, strict=True):
                self.values[k].append(float(v))
            if len(self.t) > self.capacity:
                self.t = self.t[::2]
                self.values = {k: v[::2] for k, v in self.values.items()}

    def arrays(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        with self.lock:
            return np.asarray(self.t), {k: np.asarray(v) for k, v in self.values.items()}

    def latest(self, key: str) -> float | None:
        with self.lock:
            v = self.values[key]
            return v[-1] if v and not math.isnan(v[-1]) else None
