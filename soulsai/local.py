"""`soulsai train` and `soulsai server`: the stack on one machine, as separate processes.

embedded Redis -> training node + telemetry node -> N sampling clients, a progress bar, the
stop rule (max steps or target rolling return), then an orderly shutdown and summary.json.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from soulsai import run as runfolder
from soulsai.config import Config
from soulsai.errors import SoulsaiError
from soulsai.processes import Child, free_port, pick_port, stop_processes
from soulsai.progress import join_phrases, show_number, stack_progress, update_bar
from soulsai.transport import RedisTarget, TelemetryLink, open_link
from soulsai.transport.commands import encode_command
from soulsai.transport.connection import connect, reachable
from soulsai.transport.embedded import EmbeddedRedis, die_with_parent, redis_limits
from soulsai.transport.links import TRANSIENT, as_int
from soulsai.transport.secret import PASSWORD_ENV, SECRET_NAME

if TYPE_CHECKING:
    from rich.console import Console

    from soulsai.training.resume import ResumePoint

LOCAL_REDIS_FILE = ".soulsai-local.json"  # lets `soulsai quicksave` find the embedded Redis
# A node that could not bind its port says so in this form (soulsai.metrics, telemetry.web):
# between this process's check and the node's bind (seconds: the node imports torch first)
# another run started at the same moment may take the port.
PORT_TAKEN = re.compile(
    r"choose another port with --set (training\.metrics_port|telemetry\.http_port)=PORT"
)
PORT_RETRIES = 3


def _console() -> Console:
    # rich is the server extra's; `soulsai quicksave` imports this module on a client install
    from rich.console import Console

    return Console(stderr=True)


def _url_host(host: str) -> str:
    """How to reach a server bound to `host` from this machine."""
    return "localhost" if host in ("0.0.0.0", "::", "127.0.0.1", "::1") else host


CLIENT_STOP = 5.0  # seconds a client gets to stop after SIGTERM before SIGKILL
NODE_STOP = 30.0  # seconds a node gets (the training node writes a final checkpoint)
CLIENT_GIVE_UP = 5  # a client that dies this many times in a row within FAST_DEATH is not restarted
FAST_DEATH = 20.0  # seconds


@dataclass
class LocalStack:
    cfg: Config
    config_dir: Path
    overrides: list[str]
    clients: int
    redis_mode: str = "auto"  # auto | embedded | external
    progress: bool = True
    stop_rules: bool = True  # False for `soulsai server`: run until Ctrl-C or SIGTERM
    resume: ResumePoint | None = None  # continue this run folder from this checkpoint
    console: Console = field(default_factory=_console)
    children: list[Child] = field(default_factory=list)
    restarts: int = 0  # client restarts after crashes
    run_dir: Path | None = None  # the run folder, once run() made or found it (soulsai.train)

    def run(self) -> int:
        t0 = time.time()
        redis, target = self._redis()
        prior: dict = {}  # summary.json of the run before this start (resumed runs)
        resume_args: list[str] = []
        if self.resume is not None:
            run_dir = self.resume.run_dir
            (run_dir / runfolder.LOG_DIR).mkdir(exist_ok=True)
            prior = _prior_summary(run_dir)
            resume_args = ["--resume", str(self.resume.checkpoint)]
            self.console.print(f"resuming {run_dir} from {self.resume.checkpoint.name}/")
        else:
            run_dir = runfolder.make_run_dir(self.cfg.save_dir, self.cfg.algo, self.cfg.env.id)
            (run_dir / runfolder.LOG_DIR).mkdir()
        self.run_dir = run_dir
        runfolder.atomic_write_json(run_dir / runfolder.CONFIG_FILE, self.cfg.model_dump())
        self.console.print(
            f"{self.cfg.algo} on {self.cfg.env.id}, run folder: {run_dir}", soft_wrap=True
        )
        if self.cfg.preset:
            self.console.print(f"preset {self.cfg.preset} (config.yaml and --set override it)")
        local_file = Path(self.cfg.save_dir) / LOCAL_REDIS_FILE
        stopped_by = "error"
        try:
            if redis is not None:
                self._write_local_file(local_file, target, run_dir)
            sets = self._child_sets(target)
            link = open_link(TelemetryLink, target, self.cfg.key_prefix)
            self._spawn(
                "training",
                ["node", "training", *sets, "--run-dir", str(run_dir), *resume_args],
                target,
                run_dir,
            )
            self._spawn(
                "telemetry",
                ["node", "telemetry", *sets, "--run-dir", str(run_dir), *resume_args],
                target,
                run_dir,
            )
            for i in range(self.clients):
                self._spawn(f"client-{i}", ["client", *sets], target, run_dir)
            stopped_by = self._watch(link, t0)
        except KeyboardInterrupt:
            stopped_by = "interrupted"
            self.console.print("[yellow]Ctrl-C: shutting down[/]")
        finally:
            final = self._shutdown(target)
            if redis is not None:
                redis.stop()
                _remove_local_file(local_file)
        tel, trn = final
        solved = tel.get("solved") == "1"
        best = tel.get("best_rolling_return")
        # A resumed run's totals never go back, even if this start ended before reporting.
        bests = [float(best) if best else None, prior.get("best_rolling_return")]
        runfolder.write_summary(
            run_dir,
            solved=solved or bool(prior.get("solved")),
            env_steps=max(as_int(trn.get("env_steps")), as_int(prior.get("env_steps"))),
            episodes=max(as_int(tel.get("episodes")), as_int(prior.get("episodes"))),
            wall_seconds=float(prior.get("wall_seconds") or 0.0) + time.time() - t0,
            best_rolling_return=max(
                (b for b in bests if isinstance(b, (int, float))), default=None
            ),
            target_return=self.cfg.target_return,
            stopped_by=stopped_by,
        )
        phrases = [
            f"stopped: {stopped_by}",
            f"solved: {'yes' if solved else 'no'}",
            f"env steps: {as_int(trn.get('env_steps')):,}",
            f"episodes: {as_int(tel.get('episodes')):,}",
            f"best return({self.cfg.telemetry.moving_average}): {show_number(best)}",
        ]
        self.console.print(f"run folder: {run_dir}", soft_wrap=True)  # a path stays copyable
        for line in join_phrases(phrases, self.console.width):
            self.console.print(line, soft_wrap=True, highlight=False)
        if stopped_by == "error":
            return 1
        return 130 if stopped_by == "interrupted" else 0

    # ---------------------------------------------------------------- set-up

    def _redis(self) -> tuple[EmbeddedRedis | None, RedisTarget]:
        configured = RedisTarget.from_config(self.cfg, self.config_dir)
        secret_given = (self.config_dir / SECRET_NAME).is_file() or os.environ.get(PASSWORD_ENV)
        if self.redis_mode == "external":
            connect(configured, wait=self.cfg.connect_wait).close()  # one-line error if not
        if self.redis_mode == "external" or (
            self.redis_mode == "auto"
            and (secret_given or self.cfg.redis_url)
            and reachable(configured)
        ):
            self.console.print(f"using Redis at {configured.describe()}")
            return None, configured
        t = self.cfg.training
        bulk, memory = redis_limits(t.max_message_bytes, t.max_weights_bytes)
        redis = EmbeddedRedis(max_bulk=bulk, maxmemory=memory).start()
        self.console.print(f"started embedded redis-server on 127.0.0.1:{redis.port}")
        return redis, redis.target

    def _child_sets(self, target: RedisTarget) -> list[str]:
        sets = []
        for item in self.overrides:
            sets += ["--set", item]
        mport = pick_port(self.cfg.training.metrics_port)
        hport = pick_port(self.cfg.telemetry.http_port)
        for name, want, got in (
            ("training.metrics_port", self.cfg.training.metrics_port, mport),
            ("telemetry.http_port", self.cfg.telemetry.http_port, hport),
        ):
            if want != got:
                self.console.print(f"{name} {want} is in use; using {got}")
        sets += ["--set", f"training.metrics_port={mport}", "--set", f"telemetry.http_port={hport}"]
        if target.url is None:
            sets += [
                "--set",
                f"redis_address={target.host}",
                "--set",
                f"redis_port={target.port}",
                "--set",
                "redis_url=null",
            ]
        if mport:
            where = _url_host(self.cfg.training.metrics_host)
            self.console.print(f"training node metrics: http://{where}:{mport}/metrics")
        if hport:
            where = _url_host(self.cfg.telemetry.http_host)
            self.console.print(
                f"telemetry: http://{where}:{hport}/  (Grafana source: "
                f"http://{where}:{hport}/grafana, metrics: /metrics)"
            )
        return ["--config-dir", str(self.config_dir), *sets]

    def _write_local_file(self, path: Path, target: RedisTarget, run_dir: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(
                {
                    "host": target.host,
                    "port": target.port,
                    "password": target.password,
                    "prefix": self.cfg.key_prefix,
                    "run_dir": str(run_dir.resolve()),
                    "pid": os.getpid(),
                },
                f,
            )

    def _spawn(self, name: str, args: list[str], target: RedisTarget, run_dir: Path) -> None:
        self._target, self._run_dir = target, run_dir
        self.children.append(self._start(name, args, target, run_dir))

    def _start(self, name: str, args: list[str], target: RedisTarget, run_dir: Path) -> Child:
        log_path = run_dir / runfolder.LOG_DIR / f"{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if target.password:
            env[PASSWORD_ENV] = target.password
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "soulsai", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
            )
        return Child(name, proc, log_path, critical=not name.startswith("client"), args=args)

    def _restart_clients(self, dead: list[Child]) -> None:
        """Crash-prone game clients come back by themselves, with a growing pause."""
        now = time.monotonic()
        for c in dead:
            if c.critical or c.restart_at is not None:
                continue
            c.fast_deaths = c.fast_deaths + 1 if now - c.started < FAST_DEATH else 0
            if c.fast_deaths >= CLIENT_GIVE_UP:
                self.console.print(f"[red]{c.name} keeps failing at start; not restarting it[/]")
                continue
            c.restart_at = now + min(60.0, 2.0**c.fast_deaths)
        for i, c in enumerate(self.children):
            if c.restart_at is not None and now >= c.restart_at:
                fresh = self._start(c.name, c.args, self._target, self._run_dir)
                fresh.fast_deaths = c.fast_deaths
                self.children[i] = fresh
                self.restarts += 1
                self.console.print(f"[yellow]restarted {c.name}[/]")

    def _rebind(self, c: Child) -> bool:
        """Start node `c` again on a new port if it stopped because the port picked for it was
        taken after the check (another `soulsai train` starting at the same moment); False if
        it stopped for any other reason or has been moved PORT_RETRIES times already."""
        if not c.critical or c.proc.returncode != 2 or c.port_retries >= PORT_RETRIES:
            return False
        found = PORT_TAKEN.search(" ".join(c.tail(5).split()))  # as one line, if wrapped
        if found is None:
            return False
        setting = found.group(1)
        port = free_port()
        args = [f"{setting}={port}" if a.startswith(f"{setting}=") else a for a in c.args]
        fresh = self._start(c.name, args, self._target, self._run_dir)
        fresh.port_retries = c.port_retries + 1
        self.children[self.children.index(c)] = fresh
        node = setting.startswith("training")
        host = self.cfg.training.metrics_host if node else self.cfg.telemetry.http_host
        path = "/metrics" if node else "/"
        self.console.print(
            f"[yellow]{setting}: the port was taken meanwhile (another run starting?); "
            f"{c.name} restarted on http://{_url_host(host)}:{port}{path}[/]",
            soft_wrap=True,
        )
        return True

    # ---------------------------------------------------------------- run and stop

    def _watch(self, link: TelemetryLink, t0: float) -> str:
        cfg = self.cfg
        total = (cfg.max_steps or None) if self.stop_rules else None
        window = cfg.telemetry.moving_average
        with stack_progress(self.console, disable=not self.progress) as bar:
            task = bar.add_task(cfg.algo, total=total, steps="", eta="-:--:--")
            reported: set[int] = set()
            while True:
                dead = [
                    c for c in self.children if c.proc.poll() is not None and id(c) not in reported
                ]
                for c in dead:
                    reported.add(id(c))
                for c in [c for c in dead if self._rebind(c)]:
                    dead.remove(c)
                for c in dead:
                    self.console.print(
                        f"[red]{c.name} exited with code {c.proc.returncode}; "
                        f"last lines of {c.log_path}:[/]\n{c.tail()}"
                    )
                if any(c.critical for c in dead):  # a node is essential
                    return "error"
                # Clients come and go: a dead one is restarted, training goes on meanwhile.
                self._restart_clients(dead)
                waiting = [
                    c
                    for c in self.children
                    if not c.critical and (c.proc.poll() is None or c.restart_at is not None)
                ]
                if self.clients and not waiting:
                    return "error"
                try:
                    trn, tel = link.stats("trainer"), link.stats("telemetry")
                except TRANSIENT:
                    time.sleep(0.25)
                    continue
                steps = as_int(trn.get("env_steps"))
                update_bar(bar, task, steps, total, trn, tel, window)
                if self.stop_rules and tel.get("solved") == "1":
                    return "target_return"
                if self.stop_rules and cfg.max_steps and steps >= cfg.max_steps:
                    return "max_steps"
                time.sleep(0.25)

    def _say_killed(self, line: str) -> None:
        self.console.print(f"[red]{line}[/]")

    def _shutdown(self, target: RedisTarget) -> tuple[dict, dict]:
        """Clients first, then the nodes (which write their final files); returns final stats."""
        link = None
        try:
            link = open_link(TelemetryLink, target, self.cfg.key_prefix)
            link.broadcast(encode_command("shutdown"))
        except (SoulsaiError, *TRANSIENT):
            pass
        clients = [(c.name, c.proc) for c in self.children if not c.critical]
        nodes = [(c.name, c.proc) for c in self.children if c.critical]
        hurry = False  # after a second Ctrl-C or SIGTERM, nothing more is waited for
        for procs, timeout in ((clients, CLIENT_STOP), (nodes, NODE_STOP)):
            try:
                stop_processes(procs, 0.0 if hurry else timeout, self._say_killed)
            except KeyboardInterrupt:
                hurry = True
        final: tuple[dict, dict] = ({}, {})
        if link is not None:
            try:
                final = (link.stats("telemetry"), link.stats("trainer"))
                link.close()
            except TRANSIENT:
                pass
        return final


def _prior_summary(run_dir: Path) -> dict:
    try:
        data = json.loads((run_dir / runfolder.SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remove_local_file(path: Path) -> None:
    """Remove the quicksave hint file, unless another `soulsai train` has since replaced it."""
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass
