"""Hostile config, end to end with real processes and a real redis-server.

A config written into Redis, a run folder handed over, a wrapper that fails, a redis_url with
a password, a quoted password in redis.secret. The code tests use a marker module whose import
writes a marker file: nothing a foreign source names may ever create it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from soulsai.config import load_config
from soulsai.config.trust import published_json
from soulsai.transport.connection import RedisTarget, connect
from soulsai.transport.embedded import find_redis_server, free_port
from tests.conftest import ROOT, marker_module, node_args, read_log, wait_until
from tests.integration.test_telemetry import episode

pytestmark = pytest.mark.integration


@pytest.fixture
def marker(tmp_path: Path) -> tuple[str, Path, dict[str, str]]:
    """(module name, marker file, env for a process that can import the module)."""
    name, mods, flag = marker_module(tmp_path)
    return name, flag, {"PYTHONPATH": f"{mods}{os.pathsep}{ROOT}"}


def _client_args(redis_server, config_dir: Path, prefix: str, *extra: str) -> list[str]:
    where = node_args(redis_server, config_dir, prefix, config_dir.parent, "client.config_wait=3")
    return ["client", *where, *extra]


def _publish(rclient, keys, config_dir: Path, **env: object) -> None:
    """Write a config into Redis as anyone holding the password could."""
    data = json.loads(load_config(config_dir, ["client.config_wait=3"]).model_dump_json())
    data["env"].update(env)
    rclient.set(keys.config, json.dumps(data))


def _errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("soulsai: error:")]


def test_a_client_never_imports_code_named_in_redis(
    redis_server, rclient, keys, prefix, config_dir, procs, marker
) -> None:
    module, flag, env = marker
    _publish(
        rclient,
        keys,
        config_dir,
        imports=[module],
        wrappers=[{"name": f"{module}.Wrap", "kwargs": {}}],
    )
    p = procs.start(
        *_client_args(redis_server, config_dir, prefix),
        password=redis_server.password,
        name="client",
        extra_env=env,
    )
    assert p.wait(60) == 1  # it built its env with its own keys, then found no weights
    assert not flag.exists(), "the client imported a module named in Redis"
    log = read_log(p)
    assert "ignored" in log and f"{module}.Wrap" in log, log
    assert _errors(log) and "no weights published" in _errors(log)[0], log
    assert "Traceback" not in log


def test_a_client_refuses_a_published_env_id_that_imports_a_module(
    redis_server, rclient, keys, prefix, config_dir, procs, marker
) -> None:
    module, flag, env = marker
    _publish(rclient, keys, config_dir, id=f"{module}:Foo-v0")
    p = procs.start(
        *_client_args(redis_server, config_dir, prefix),
        password=redis_server.password,
        name="client",
        extra_env=env,
    )
    assert p.wait(60) == 2
    log = read_log(p)
    assert len(_errors(log)) == 1 and f"{module}:Foo-v0" in _errors(log)[0], log
    assert "Traceback" not in log
    assert not flag.exists(), "the client imported a module named in Redis"


@pytest.mark.parametrize(
    ("wrapper", "reason"),
    [
        ("{name: gymnasium.wrappers.TimeLimit, kwargs: {max_steps_typo: 5}}", "TypeError"),
        ("{name: no_such_module_x.Wrapper}", "ModuleNotFoundError"),
    ],
)
def test_a_failing_wrapper_ends_the_client_with_one_line(
    redis_server, rclient, keys, prefix, config_dir, procs, wrapper, reason
) -> None:
    rclient.set(keys.config, published_json(load_config(config_dir, ["client.config_wait=3"])))
    user = config_dir / "config.yaml"
    user.write_text(f"env:\n  wrappers:\n    - {wrapper}\n")
    p = procs.start(
        *_client_args(redis_server, config_dir, prefix),
        password=redis_server.password,
        name="client",
    )
    assert p.wait(60) == 2
    log = read_log(p)
    assert "Traceback" not in log, log
    errors = _errors(log)
    assert len(errors) == 1, log
    assert "env.wrappers[0]" in errors[0] and str(user) in errors[0] and reason in errors[0]


def test_a_password_in_redis_url_is_never_published_or_stored(
    redis_server, rclient, keys, prefix, config_dir, procs, tmp_path
) -> None:
    pw = redis_server.password
    save = tmp_path / "saves"
    p = procs.start(
        "node",
        "training",
        "--config-dir",
        str(config_dir),
        "--set",
        f"redis_url=redis://default:{pw}@127.0.0.1:{redis_server.port}/0",
        "--set",
        f"key_prefix={prefix}",
        "--set",
        f"save_dir={save}",
        "--set",
        "training.metrics_port=0",
        name="trainer",
    )
    published = wait_until(lambda: rclient.get(keys.config), 60, f"a config\n{read_log(p)}")
    assert pw.encode() not in published and b"127.0.0.1" in published
    p.terminate()
    assert p.wait(60) == 0, read_log(p)
    runs = list(save.iterdir())
    assert len(runs) == 1
    files = [f for f in runs[0].rglob("*") if f.is_file()]
    assert (runs[0] / "config.json") in files and (runs[0] / "checkpoint" / "config.json") in files
    for f in files:
        assert pw.encode() not in f.read_bytes(), f
    assert pw not in read_log(p)


# ---------------------------------------------------------------- run folders, via the CLI


def _soulsai(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "soulsai", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def _crafted_run(tmp_path: Path, config_dir: Path, module: str) -> Path:
    from soulsai.config import Config
    from soulsai.training.saves import Saves
    from tests.unit.test_saves import FakeNode

    data = json.loads(load_config(config_dir, ["dqn.hidden=[16, 16]"]).model_dump_json())
    data["env"]["imports"] = [module]
    data["env"]["wrappers"] = [{"name": f"{module}.Wrap", "kwargs": {}}]
    crafted = Config.model_validate(data)
    run = tmp_path / "saves" / "2026-01-01_00-00-00_dqn_CartPole-v1"
    run.mkdir(parents=True)
    (run / "config.json").write_text(crafted.model_dump_json())
    Saves(crafted, run, FakeNode(crafted)).save("best")
    Saves(crafted, run, FakeNode(crafted)).save("periodic")
    return run


def test_evaluate_never_imports_code_named_in_a_run_folder(tmp_path, config_dir, marker) -> None:
    module, flag, env = marker
    run = _crafted_run(tmp_path, config_dir, module)
    # this machine's config: ./config (config_dir), as a user running it from there has
    out = _soulsai("evaluate", str(run), "--episodes", "1", cwd=tmp_path, env=env)
    assert not flag.exists(), "evaluate imported a module the run folder named"
    assert out.returncode == 0, out.stderr
    assert "not imported" in out.stderr and f"{module}.Wrap" in out.stderr
    assert "mean return" in out.stdout
    assert not flag.exists(), "evaluate imported a module the run folder named"


def test_resume_refuses_a_run_folder_holding_a_symlink(tmp_path, config_dir, marker) -> None:
    module, flag, env = marker
    run = _crafted_run(tmp_path, config_dir, module)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (run / "episodes.jsonl").symlink_to(victim)
    out = _soulsai(
        "node", "training", "--config-dir", str(config_dir), "--resume", str(run),
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "symlink" in lines[0] and "episodes.jsonl" in lines[0], out.stderr
    assert victim.read_text() == "precious\n" and not flag.exists()


# ---------------------------------------------------------------- the secret file


@pytest.mark.parametrize(
    ("line", "password"),
    [
        ("requirepass plain-password-0123456789", "plain-password-0123456789"),
        ('requirepass "quoted password with spaces"', "quoted password with spaces"),
        ('requirepass "esc\\"aped\\x41-0123456789"', 'esc"apedA-0123456789'),
        ("requirepass 'single quoted-0123456789'", "single quoted-0123456789"),
    ],
)
def test_a_secret_file_means_what_redis_reads_in_it(
    tmp_path: Path, config_dir: Path, line: str, password: str
) -> None:
    """redis-server reads the secret file as its config (as the compose stack does); the
    password soulsai reads from the same file must be the one Redis asks for."""
    secret = config_dir / "redis.secret"
    secret.write_text(f"# the shared password\n{line}\n")
    port = free_port()
    argv = [find_redis_server(), str(secret), "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    log = tmp_path / "redis.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        cfg = load_config(config_dir, ["redis_address=127.0.0.1", f"redis_port={port}"])
        target = RedisTarget.from_config(cfg, config_dir)
        assert target.password == password

        def ping() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                connect(target, socket_timeout=2).close()
                return True
            except Exception as e:  # not up yet, or refused: keep the last reason
                ping.reason = str(e)  # type: ignore[attr-defined]
                return "refused the password" in str(e) and pytest.fail(str(e))

        wait_until(ping, 15, f"redis with {line}\n{log.read_text()}")
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_telemetry_node_writes_only_into_a_run_folder_under_its_save_dir(
    redis_server, rclient, keys, prefix, config_dir, procs, tmp_path
):
    """The run folder a training node announces is read from Redis: a telemetry node started
    without --run-dir takes it only when it is a folder directly under its own save_dir."""
    saves, victim = tmp_path / "saves", tmp_path / "victim"
    victim.mkdir()
    (saves / "2026-01-01_00-00-00_dqn_CartPole-v1").mkdir(parents=True)
    args = node_args(redis_server, config_dir, prefix, tmp_path, "telemetry.update_interval=1")
    for announced in (victim, saves / ".." / "victim"):
        rclient.hset(keys.run, mapping={"run_dir": str(announced), "started": "1"})
        p = procs.start("node", "telemetry", *args, password=redis_server.password)
        assert p.wait(60) == 2, read_log(p)
        out = read_log(p).strip()
        assert "announced in Redis" in out and "Traceback" not in out, out
        assert len(out.splitlines()) == 1, out
    assert list(victim.iterdir()) == []
    honest = saves / "2026-01-01_00-00-00_dqn_CartPole-v1"
    rclient.hset(keys.run, mapping={"run_dir": str(honest)})
    p = procs.start("node", "telemetry", *args, password=redis_server.password)
    rclient.xadd(keys.episodes, {"m": episode("c1", 1, 1.0)})
    wait_until(lambda: (honest / "episodes.jsonl").exists(), 30, f"episodes\n{read_log(p)}")
    assert p.poll() is None
