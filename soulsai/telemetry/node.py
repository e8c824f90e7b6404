"""The telemetry node: episode stream -> statistics -> episodes.jsonl, figure, best-model command.

Episodes arrive on a Redis stream and are read with a cursor, so a telemetry node that is down
or slow loses nothing: on restart it continues after the last record it wrote to disk.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from soulsai import run as runfolder
from soulsai.config import Config
from soulsai.errors import ProtocolError
from soulsai.metrics import NodeMetrics
from soulsai.telemetry.figures import draw
from soulsai.training.intake import RateLimitedLog
from soulsai.transport import RedisTarget, TelemetryLink, open_link
from soulsai.transport.codec import decode_episode, encode_command
from soulsai.transport.links import TRANSIENT

log = logging.getLogger(__name__)

BEST_MIN_EPISODES_BETWEEN = 10  # debounce for save_best on a rising curve
METRICS = {
    "episodes": "episodes received",
    "env_steps": "env steps at the last episode",
    "last_return": "return of the last episode",
    "rolling_return": "moving-average return",
    "best_rolling_return": "best moving-average return so far",
    "clients": "connected sampling clients",
}


class TelemetryNode:
    def __init__(
        self, cfg: Config, target: RedisTarget, run_dir: Path, stop: threading.Event
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.stop = stop
        self.link = open_link(TelemetryLink, target, cfg.key_prefix, wait=cfg.connect_wait)
        self.records: list[dict[str, Any]] = self._load_existing()
        self.unwritten: list[dict[str, Any]] = []
        self.cursor = str(self.records[-1].get("stream_id", "0-0")) if self.records else "0-0"
        self.returns = [float(r["return"]) for r in self.records]
        self.best = -float("inf")
        self.best_saved_at = -BEST_MIN_EPISODES_BETWEEN
        self.solved = False
        self.rejected: dict[str, int] = {}
        self.metrics = NodeMetrics("telemetry", METRICS)
        self._log = RateLimitedLog(log)

    def _load_existing(self) -> list[dict[str, Any]]:
        path = self.run_dir / runfolder.EPISODES_FILE
        if not path.is_file():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a torn last line from a crash; the stream still has the record
        return out

    def rolling(self) -> float | None:
        w = self.cfg.telemetry.moving_average
        if len(self.returns) < w:
            return None
        return float(np.mean(self.returns[-w:]))

    def run(self) -> None:
        self.metrics.serve(self.cfg.telemetry.http_port, "telemetry.http_port")
        log.info(
            "telemetry node up, run folder %s, %d episodes on disk", self.run_dir, len(self.records)
        )
        backoff = 0.1
        try:
            while not self.stop.is_set():
                try:
                    self.poll()
                    backoff = 0.1
                except TRANSIENT as e:
                    self._log.warning("redis", f"telemetry cannot read Redis ({type(e).__name__})")
                    self.stop.wait(backoff)
                    backoff = min(2 * backoff, 5.0)
        finally:
            self.flush()

    def poll(self, block_ms: int = 500) -> int:
        """Read and process the next records; returns how many were processed."""
        entries = self.link.read_episodes(self.cursor, count=500, block_ms=block_ms)
        if not entries:
            return 0
        env_steps = self.link.trainer_env_steps()
        for entry_id, fields in entries:
            self.cursor = entry_id
            raw = fields.get(b"m") if isinstance(fields, dict) else None
            try:
                rec = decode_episode(raw, self.cfg.telemetry.max_record_bytes)
            except ProtocolError as e:
                self.rejected[e.reason] = self.rejected.get(e.reason, 0) + 1
                self._log.warning(e.reason, f"rejected episode record: {e}")
                continue
            self._add(rec.as_dict(), env_steps, entry_id)
        self._after_batch(env_steps)
        return len(entries)

    def _add(self, rec: dict[str, Any], env_steps: int, entry_id: str) -> None:
        rec = {
            "episode": len(self.records) + 1,
            **rec,
            "env_steps": env_steps,
            "stream_id": entry_id,
        }
        self.records.append(rec)
        self.unwritten.append(rec)
        self.returns.append(float(rec["return"]))
        rolling = self.rolling()
        if rolling is not None and rolling > self.best:
            self.best = rolling
            n = len(self.records)
            if n - self.best_saved_at >= BEST_MIN_EPISODES_BETWEEN:
                self.best_saved_at = n
                self.link.send_trainer_command(
                    encode_command("save_best", key="return", value=rolling, episode=n)
                )
        target = self.cfg.target_return
        if target is not None and rolling is not None and rolling >= target:
            self.solved = True

    def _after_batch(self, env_steps: int) -> None:
        rolling = self.rolling()
        stats = {
            "episodes": len(self.records),
            "env_steps": env_steps,
            "last_return": self.returns[-1] if self.returns else "",
            "rolling_return": "" if rolling is None else round(rolling, 4),
            "best_rolling_return": "" if self.best == -float("inf") else round(self.best, 4),
            "solved": int(self.solved),
            "rejected": sum(self.rejected.values()),
        }
        self.link.set_stats(stats)
        self.metrics.set_all({k: v for k, v in stats.items() if v != ""}, self.rejected)
        if len(self.unwritten) >= self.cfg.telemetry.update_interval:
            self.flush()

    def flush(self) -> None:
        """Append unwritten records to episodes.jsonl and redraw the figure."""
        if self.unwritten:
            lines = "".join(json.dumps(r) + "\n" for r in self.unwritten)
            with open(self.run_dir / runfolder.EPISODES_FILE, "a", encoding="utf-8") as f:
                f.write(lines)  # one write of whole lines; readers never see half a record
            self.unwritten = []
        if self.records:
            draw(
                self.run_dir / runfolder.FIGURE_FILE,
                self.records,
                "env_steps",
                ["return", "length"],
                self.cfg.telemetry.moving_average,
                f"{self.cfg.algo} on {self.cfg.env.id}",
            )
        self.write_summary()

    def write_summary(self, wall_seconds: float | None = None) -> None:
        started = self.records[0]["time"] if self.records else time.time()
        runfolder.write_summary(
            self.run_dir,
            solved=self.solved,
            env_steps=self.records[-1]["env_steps"] if self.records else 0,
            episodes=len(self.records),
            wall_seconds=wall_seconds if wall_seconds is not None else time.time() - started,
            best_rolling_return=None if self.best == -float("inf") else self.best,
            target_return=self.cfg.target_return,
        )
