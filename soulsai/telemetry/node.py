"""The telemetry node: episode stream -> statistics -> episodes.jsonl, figure, best-model command,
live page, Grafana source and /metrics.

Episodes arrive on a Redis stream and are read with a cursor, so a telemetry node that is down
or slow loses nothing: on restart it continues after the last record it wrote to disk (see
stream.py for what happens when Redis itself was restarted or replaced).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

from soulsai import run as runfolder
from soulsai.config import Config
from soulsai.errors import ProtocolError
from soulsai.logs import RateLimitedLog
from soulsai.metrics import EPISODE_REJECTS, NodeMetrics, run_labels
from soulsai.scalars import WandbOptions, open_scalars
from soulsai.telemetry.figures import draw_stats
from soulsai.telemetry.live import LiveWatch
from soulsai.telemetry.records import append_records, load_records, start_time
from soulsai.telemetry.stats import BASE_SERIES, EpisodeStats, SystemSeries, stream_seconds
from soulsai.telemetry.stream import START, SeenRecords, StreamCursor
from soulsai.transport import RedisTarget, TelemetryLink, open_link
from soulsai.transport.commands import encode_command
from soulsai.transport.episodes import decode_episode
from soulsai.transport.links import TRANSIENT

log = logging.getLogger(__name__)

READ_BATCH = 500  # stream entries per read
SAMPLE_EVERY = 1.0  # seconds between samples of steps/s and connected clients
CHECK_EVERY = 2.0  # seconds between checks of the stream position while idle
GAUGES = {
    "last_return": "return of the last episode",
    "rolling_return": "moving-average return",
    "best_rolling_return": "best moving-average return so far",
    "clients": "connected sampling clients",
    "env_steps_per_second": "env steps per second over the last 30 s (the live page's rate)",
}
COUNTERS = {
    "episodes": "episodes received",
    "env_steps": "env steps (training node's total)",
    "missing": "episodes numbered by a client that never arrived",
    "duplicates": "episode records received twice and skipped",
}
METRICS = {**GAUGES, **COUNTERS}  # every metric the telemetry node exports


class TelemetryNode:
    def __init__(
        self,
        cfg: Config,
        target: RedisTarget,
        run_dir: Path,
        stop: threading.Event,
        config_dir: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_dir = config_dir  # where the Grafana routes' token file may be
        self.tcfg = cfg.telemetry
        self.run_dir = run_dir
        self.stop = stop
        self.link = open_link(TelemetryLink, target, cfg.key_prefix, wait=cfg.connect_wait)
        self.stats = EpisodeStats(self.tcfg, cfg.target_return)
        self.system = SystemSeries()
        # approximate trimming (MAXLEN ~) may keep a little more than stream_maxlen
        maxlen = self.tcfg.stream_maxlen
        self.seen = SeenRecords(window=maxlen + maxlen // 10 + 1000)
        records = load_records(run_dir / runfolder.EPISODES_FILE)
        for rec in records:
            self.stats.add(rec)
        self.seen.load(records)
        self.episodes = len(records)
        cursor = str(records[-1].get("stream_id") or START) if records else START
        self.cursor = StreamCursor(self.link, cursor)
        self.t0 = start_time(records[0]) if records else None
        self.env_steps = int(records[-1].get("env_steps") or 0) if records else 0
        self.record_steps: int | None = self.env_steps if records else None  # of the last one
        self._synced = False
        self.unwritten: list[dict[str, Any]] = []
        self.pending_commands: list[bytes] = []
        self.rejected: dict[str, int] = {}
        labels = run_labels(run_dir.name, cfg.algo, cfg.env.id, cfg.preset)
        self.metrics = NodeMetrics("telemetry", GAUGES, COUNTERS, EPISODE_REJECTS, labels)
        self.clients: set[str] | None = None
        self.last_draw = -math.inf
        self._log = RateLimitedLog(log)
        self.http: Any = None
        self.scalars = open_scalars(  # TensorBoard / W&B: one point per episode from here on
            run_dir,
            "telemetry",
            tensorboard=self.tcfg.tensorboard,
            wandb=WandbOptions(cfg.wandb.project, cfg.wandb.mode, cfg.wandb.entity)
            if cfg.wandb.enabled
            else None,
            config=cfg.model_dump(),
            prefix="episode",
        )
        self.watch = LiveWatch(cfg.algo, cfg.max_steps)

    # ---------------------------------------------------------------- main loop

    def run(self) -> None:
        self._start_http()
        log.info(
            "telemetry node up, run folder %s, %d episodes on disk, stream position %s",
            self.run_dir,
            self.episodes,
            self.cursor.cursor,
        )
        backoff, last_sample, last_check = 0.1, -math.inf, -math.inf
        must_check = True
        try:
            while not self.stop.is_set():
                try:
                    if must_check or time.monotonic() - last_check >= CHECK_EVERY:
                        self.cursor.check()
                        must_check, last_check = False, time.monotonic()
                    got = self.poll()
                    if got:
                        last_check = time.monotonic()  # records flow: the position is fine
                    elif self.unwritten:  # the stream went quiet: no record waits on disk
                        self.flush()
                    if time.monotonic() - last_sample >= SAMPLE_EVERY:
                        self.sample()
                        last_sample = time.monotonic()
                    backoff = 0.1
                except TRANSIENT as e:
                    self._log.warning("redis", f"telemetry cannot reach Redis ({type(e).__name__})")
                    must_check = True  # Redis may come back as a different (empty) server
                    self.stop.wait(backoff)
                    backoff = min(2 * backoff, 5.0)
        finally:
            self.flush(final=True)
            self.scalars.close()
            if self.http is not None:
                self.http.stop()

    def _start_http(self) -> None:
        port = self.tcfg.http_port
        if port == 0:
            return
        from soulsai.telemetry.guards import read_token
        from soulsai.telemetry.web import HttpServer, WebState, make_app

        token = read_token(self.config_dir)
        state = WebState(
            stats=self.stats,
            system=self.system,
            summary=self.summary,
            x_key=self.tcfg.figure_x,
            y_keys=list(self.tcfg.figure_y),
            title=self._title(),
            registry=self.metrics.registry,
            live=self.live_sections,
        )
        app = make_app(state, token=token, cors_origins=self.tcfg.cors_origins)
        host = self.tcfg.http_host
        self.http = HttpServer(app, port, "telemetry.http_port", host=host).start()
        log.info(
            "live page http://%s:%d/  Grafana source /grafana%s  metrics /metrics",
            host,
            self.http.port,
            " (bearer token)" if token else "",
        )

    def poll(self, block_ms: int = 200) -> int:
        """Read and process the next records; returns how many stream entries were handled.
        All Redis reads come first, so an error cannot leave a batch half-processed."""
        entries = self.cursor.read(READ_BATCH, block_ms)
        if not entries:
            return 0
        steps_now = self.env_steps = max(self.env_steps, self.link.trainer_env_steps())
        started = self._run_started() if self.t0 is None else None
        fresh: list[tuple[dict[str, Any], str]] = []
        for entry_id, fields in entries:
            raw = fields.get(b"m") if isinstance(fields, dict) else None
            try:
                bounds = (self.tcfg.max_record_bytes, self.tcfg.max_abs_return)
                rec = decode_episode(raw, *bounds).as_dict()
            except ProtocolError as e:
                self.rejected[e.reason] = self.rejected.get(e.reason, 0) + 1
                self._log.warning(e.reason, f"rejected episode record: {e}")
                continue
            if self.seen.add(rec):
                fresh.append((rec, entry_id))
        if fresh and self.t0 is None:
            first = stream_seconds(fresh[0][1]) or time.time()
            self.t0 = started if started is not None and started <= first else first
        for rec, entry_id in fresh:
            self._add(rec, entry_id, self._steps_after(rec, steps_now))
        self.cursor.cursor = entries[-1][0]
        self._check_best()
        self._send_commands()
        self._publish()
        if len(self.unwritten) >= self.tcfg.update_interval:
            self.flush()
        return len(entries)

    def _steps_after(self, rec: dict[str, Any], steps_now: int) -> int:
        """env_steps of a record: the env steps of every episode finished so far, i.e. the sum
        of their lengths (as SB3's monitor plots count timesteps). Exact and monotone, unlike
        the training node's total, which advances in bursts as its intake drains Redis. The
        first record of an empty run folder starts from the training node's total then."""
        length = max(0, int(rec.get("length", 0)))
        if not self._synced:
            # The first record after this node starts (a new run, or a resumed one whose
            # last episodes died with the old Redis) catches up with the training node's
            # total: those env steps happened, and the curve must not lag behind them.
            self._synced = True
            self.record_steps = max(self.record_steps or 0, steps_now - length)
        assert self.record_steps is not None
        self.record_steps += length
        return self.record_steps

    def _add(self, rec: dict[str, Any], entry_id: str, env_steps: int) -> None:
        # Redis's clock stamps the id (one clock for every client), but never past this node's
        # now: anyone may XADD an id in the future, and Redis then gives every later record
        # that time, which would pin the time axis there.
        now = time.time()
        received = min(stream_seconds(entry_id) or now, now)
        self.episodes += 1
        rec = {
            "episode": self.episodes,
            **rec,
            "env_steps": env_steps,
            "wall_time": round(received - (self.t0 or received), 3),
            "stream_id": entry_id,
        }
        self.stats.add(rec)
        self.unwritten.append(rec)
        self._write_scalars(env_steps, received)

    def _write_scalars(self, env_steps: int, when: float) -> None:
        """The episode just added, every series of it (return, length, their moving averages,
        info.*, wins), as TensorBoard / W&B scalars at its env steps."""
        if not self.scalars:
            return
        with self.stats.lock:
            row = {}
            for key in self.stats.series_names():
                col = self.stats.view(key)
                if key not in BASE_SERIES and col is not None and len(col):
                    row[key] = float(col[-1])
        self.scalars.write(row, env_steps, when)

    def _check_best(self) -> None:
        if not self.unwritten:
            return
        value = self.stats.best_due(self.unwritten[-1])
        if value is not None:
            key, model = self.tcfg.best_key, self.stats.model_id
            log.info(
                "new best %s moving average %.4g at episode %d (model %s)",
                key, value, self.episodes, model,
            )  # fmt: skip
            command = encode_command(
                "save_best", key=key, value=value, episode=self.episodes, model_id=model
            )
            self.pending_commands.append(command)

    def _run_started(self) -> float | None:
        """When the training node started the run (the hash it publishes), if known."""
        try:
            started = float(self.link.run_info().get("started") or "")
        except ValueError:
            return None
        return started if math.isfinite(started) else None

    def _send_commands(self) -> None:
        while self.pending_commands:
            self.link.send_trainer_command(self.pending_commands[0])  # TRANSIENT: retried later
            self.pending_commands.pop(0)

    def sample(self) -> None:
        """Steps/s and connected clients over time; heartbeat changes become annotations."""
        now = time.time()
        counter = self.link.trainer_env_steps()  # 0 while the trainer's hash is missing
        self.env_steps = max(self.env_steps, counter)
        beats = self.link.client_heartbeats()
        ids = set(beats)
        self.watch.observe(now, self.link.stats("trainer"), beats)  # for the live page
        if self.clients is not None:
            for cid in sorted(ids - self.clients):
                self.stats.note_client(cid, True, now)
            for cid in sorted(self.clients - ids):
                self.stats.note_client(cid, False, now)
        self.clients = ids
        if counter == 0 and self.env_steps > 0:
            counter = self.env_steps  # no reading (Redis restarted empty): not a restart to 0
        self.system.sample(now, self.env_steps, len(ids), counter)
        self._publish()

    # ---------------------------------------------------------------- outputs

    def summary(self) -> dict[str, Any]:
        """The latest numbers (None where there is nothing yet)."""
        stats = self.stats
        rate = self.system.latest("steps_per_s")  # env steps per second over the last 30 s
        with stats.lock:
            return {
                "episodes": self.episodes,
                "env_steps": self.env_steps,
                "last_return": stats.latest("return"),
                "rolling_return": stats.rolling("return"),
                "best_rolling_return": stats.best_return,
                "best_key": self.tcfg.best_key,
                "best_value": stats.best_value(),
                "solved": stats.solved,
                "target_return": self.cfg.target_return,
                "clients": self.system.latest("clients"),
                "env_steps_per_second": rate,
                "steps_per_s": rate,  # the same smoothed rate, under its old name
                "rejected": sum(self.rejected.values()),
                "missing": self.seen.missing,
                "duplicates": self.seen.duplicates,
                "wall_time": None if self.t0 is None else round(time.time() - self.t0, 1),
            }

    def live_sections(self, points: int, summary: dict[str, Any]) -> dict[str, Any]:
        """The live page's model, learner, progress, clients and rejects sections; the ETA
        uses the summary's smoothed rate."""
        rate = summary.get("env_steps_per_second", summary.get("steps_per_s"))
        rate = rate if isinstance(rate, (int, float)) else None
        out = self.watch.payload(time.time(), self.stats, self.env_steps, rate, points)
        out["telemetry_rejects"] = dict(self.rejected)
        return out

    def _publish(self) -> None:
        s = self.summary()
        numbers = {k: v for k, v in s.items() if isinstance(v, (int, float)) and v is not None}
        self.metrics.set_all(numbers, self.rejected)
        fields = (
            "episodes", "env_steps", "last_return", "rolling_return", "best_rolling_return",
            "rejected", "missing", "duplicates", "env_steps_per_second",
        )  # fmt: skip
        out: dict[str, Any] = {k: "" if s[k] is None else _round(s[k]) for k in fields}
        out["solved"] = int(bool(s["solved"]))
        self.link.set_stats(out)

    def flush(self, final: bool = False) -> None:
        """Append unwritten records to episodes.jsonl, log `log_keys`, redraw the figure (at
        most every `figure_interval` seconds, always when `final`), write summary.json."""
        if self.unwritten:
            append_records(self.run_dir / runfolder.EPISODES_FILE, self.unwritten)
            self.unwritten = []
            self._log_update()
        self.write_summary()
        now = time.monotonic()
        if self.stats.n and (final or now - self.last_draw >= self.tcfg.figure_interval):
            draw_stats(
                self.run_dir / runfolder.FIGURE_FILE,
                self.stats,
                self.tcfg.figure_x,
                list(self.tcfg.figure_y),
                self._title(),
            )
            self.last_draw = time.monotonic()

    def _log_update(self) -> None:
        parts = [f"episode {self.episodes}", f"env steps {self.env_steps}"]
        for key in self.tcfg.log_keys:
            value = self.stats.latest(key)
            parts.append(f"{key} {'-' if value is None else f'{value:.4g}'}")
        log.info(" | ".join(parts))

    def write_summary(self) -> None:
        runfolder.write_summary(
            self.run_dir,
            solved=self.stats.solved,
            env_steps=self.env_steps,
            episodes=self.episodes,
            wall_seconds=0.0 if self.t0 is None else time.time() - self.t0,
            best_rolling_return=self.stats.best_return,
            target_return=self.cfg.target_return,
        )

    def _title(self) -> str:
        return f"{self.cfg.algo} on {self.cfg.env.id} ({self.run_dir.name})"


def _round(v: float) -> float:
    return round(v, 4) if isinstance(v, float) else v
