"""ACL users, TLS and the compose Redis entrypoint against real redis-server processes."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from soulsai.errors import ConnectionFailed
from soulsai.transport.connection import RedisTarget, connect
from soulsai.transport.embedded import find_redis_server, free_port
from soulsai.transport.keys import Keys
from soulsai.transport.secret import read_credentials
from tests.conftest import ROOT, read_log, wait_until

pytestmark = pytest.mark.integration

REDIS = find_redis_server()
_version = re.search(
    r"v=(\d+)\.", subprocess.run([REDIS, "--version"], capture_output=True, text=True).stdout
)
needs_redis7 = pytest.mark.skipif(
    not _version or int(_version.group(1)) < 7,
    reason=f"ACL selectors need Redis >= 7.0; {REDIS} is older (install Debian's redis-server)",
)
K = Keys("soulsai")


class RedisProc:
    """A redis-server started from a config file, stopped by the fixture that made it."""

    def __init__(self, argv: list[str], port: int, log: Path) -> None:
        self.port = port
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited")
            return self._listening()

        try:
            wait_until(up, 10, "redis-server to listen")
        except (AssertionError, RuntimeError):
            self.stop()
            raise RuntimeError(f"redis-server did not start: {log.read_text()[-500:]}") from None

    def _listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_redis(tmp: Path, conf: list[str], name: str = "redis") -> RedisProc:
    """A redis-server on a free loopback port; `{port}` in `conf` lines is that port."""
    port = free_port()
    lines = [
        "bind 127.0.0.1",
        f"dir {tmp}",
        'save ""',
        *(c.replace("{port}", str(port)) for c in conf),
    ]
    if not any(line.startswith("tls-port") for line in lines):
        lines.append(f"port {port}")
    path = tmp / f"{name}.conf"
    path.write_text("\n".join(lines) + "\n")
    return RedisProc([REDIS, str(path)], port, tmp / f"{name}.log")


def soulsai(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SOULSAI_REDIS_PASSWORD"}
    return subprocess.run(
        [sys.executable, "-m", "soulsai", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def make_config_dir(path: Path, config_yaml: dict | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "config_d.yaml").write_text((ROOT / "config" / "config_d.yaml").read_text())
    if config_yaml:
        (path / "config.yaml").write_text(yaml.safe_dump(config_yaml))
    return path


@pytest.fixture
def acl_setup(tmp_path: Path) -> Iterator[tuple[RedisProc, dict[str, str], Path]]:
    """`soulsai acl --generate` writes the users; a redis-server loads them as its aclfile."""
    server_cfg = make_config_dir(tmp_path / "server")
    (server_cfg / "redis.secret").write_text("user admin an-admin-password-0123456789\n")
    out = soulsai(
        "acl",
        "--config-dir",
        str(server_cfg),
        "--generate",
        "--client-secret",
        str(tmp_path / "client.secret"),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "added users trainer, client" in out.stdout
    users = read_credentials(server_cfg / "redis.secret").users
    yield server_cfg, users, tmp_path


def target(port: int, user: str | None, password: str | None, **kw) -> RedisTarget:
    return RedisTarget(host="127.0.0.1", port=port, username=user, password=password, **kw)


@needs_redis7
def test_client_user_can_do_its_job_and_nothing_else(acl_setup) -> None:
    server_cfg, users, tmp = acl_setup
    server = start_redis(tmp, [f"aclfile {server_cfg / 'users.acl'}"])
    try:
        admin = connect(target(server.port, "admin", users["admin"]))
        admin.set(K.weights, b"w")
        admin.set(K.config, b"{}")
        admin.set(K.model_id, 3)
        admin.set("otherexp:weights", b"x")
        c = connect(target(server.port, "client", users["client"]))
        # what a sampling client does
        assert c.lpush(K.samples, b"a", b"b") == 2 and c.ltrim(K.samples, 0, 9)
        assert c.xadd(K.episodes, {"m": b"e"}, maxlen=100, approximate=True)
        assert c.strlen(K.weights) == 1 and c.getrange(K.weights, 0, 9) == b"w"
        assert c.getrange(K.config, 0, 9) == b"{}" and c.get(K.model_id) == b"3"
        assert c.set(K.heartbeat("pc1"), "{}", px=5000)
        assert c.execute_command("INCR", K.client_seq) == 1 and c.exists(K.throttle) == 0
        ps = c.pubsub()
        ps.subscribe(K.model_channel, K.commands)
        assert ps.get_message(timeout=2)["type"] == "subscribe"
        ps.close()
        # what it must not do
        refused = [
            lambda: c.flushall(),
            lambda: c.config_get("maxmemory"),
            lambda: c.set(K.weights, b"evil"),
            lambda: c.set(K.config, b"{}"),
            lambda: c.set(K.model_id, 99),
            lambda: c.delete(K.samples),
            lambda: c.rpop(K.samples),  # no stealing or reading others' experience
            lambda: c.lrange(K.samples, 0, -1),
            lambda: c.lpush(K.trainer_commands, b'{"cmd": "shutdown"}'),
            lambda: c.publish(K.commands, b'{"cmd": "shutdown"}'),
            lambda: c.hgetall(K.trainer_stats),
            lambda: c.get(K.heartbeat("pc1")),
            lambda: c.get("otherexp:weights"),
            lambda: c.keys("*"),
            lambda: c.eval("return 1", 0),
            lambda: c.xadd(K.samples, {"m": b"x"}),  # a command on a key it was not given for
            lambda: c.execute_command("SELECT", 1),  # memory in a database no node trims
            lambda: c.incrby(K.client_seq, 2**62),  # INCR only: the index cannot be exhausted
            lambda: c.get(K.config),  # bounded reads only (GETRANGE)
        ]
        for i, call in enumerate(refused):
            with pytest.raises(redis.exceptions.NoPermissionError):
                call()
                pytest.fail(f"refused[{i}] was allowed")
        assert admin.get(K.weights) == b"w" and admin.llen(K.samples) == 2
        # the trainer user has the prefix's data, but no admin commands and no other prefix
        t = connect(target(server.port, "trainer", users["trainer"]))
        assert t.set(K.weights, b"new") and t.rpop(K.samples) == b"a"
        assert t.hset(K.trainer_stats, "x", 1) == 1 and t.publish(K.commands, b"{}") == 0
        assert list(t.scan_iter(match=K.heartbeat_pattern)) == [K.heartbeat("pc1").encode()]
        for call in (
            lambda: t.flushall(),
            lambda: t.flushdb(),
            lambda: t.config_set("appendonly", "no"),
            lambda: t.keys("*"),
            lambda: t.eval("return 1", 0),
            lambda: t.get("otherexp:weights"),
            lambda: t.execute_command("SELECT", 1),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                call()
        # the default user is off: no password, no access
        with pytest.raises(ConnectionFailed, match="needs a password"):
            connect(target(server.port, None, None))
        with pytest.raises(ConnectionFailed) as info:
            connect(target(server.port, "client", "wrong-password"))
        assert str(info.value) == (
            f"Redis at 127.0.0.1:{server.port} refused user 'client' or its password "
            "(check config/redis.secret and redis_username)"
        )
    finally:
        server.stop()


@needs_redis7
def test_wrong_client_password_is_one_line(acl_setup) -> None:
    server_cfg, users, tmp = acl_setup
    server = start_redis(tmp, [f"aclfile {server_cfg / 'users.acl'}"])
    try:
        cdir = make_config_dir(tmp / "client", {"redis_address": "127.0.0.1"})
        (cdir / "redis.secret").write_text("user client not-the-right-password-at-all\n")
        out = soulsai(
            "client", "--config-dir", str(cdir), "--set", f"redis_port={server.port}", cwd=tmp
        )
        assert out.returncode == 1
        assert out.stderr.strip() == (
            f"soulsai: error: Redis at 127.0.0.1:{server.port} refused user 'client' or its "
            "password (check config/redis.secret and redis_username)"
        )
    finally:
        server.stop()


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "make_tls_certs.sh"), str(tmp_path / "tls")],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0 and "openssl" in out.stderr:
        pytest.skip(f"openssl is missing: {out.stderr.strip()[:200]}")
    assert out.returncode == 0, out.stderr
    return tmp_path / "tls"


def tls_conf(tls: Path) -> list[str]:
    return [
        "port 0",
        "tls-port {port}",
        f"tls-cert-file {tls / 'redis.crt'}",
        f"tls-key-file {tls / 'redis.key'}",
        f"tls-ca-cert-file {tls / 'ca.crt'}",
        "tls-auth-clients optional",
    ]


@needs_redis7
def test_nodes_and_client_over_tls_with_acl_users(acl_setup, certs: Path, procs) -> None:
    """A training node and a telemetry node as `trainer`, a client as `client`, over rediss://
    with a private CA: the whole loop runs and nothing is refused."""
    server_cfg, users, tmp = acl_setup
    server = start_redis(tmp, [*tls_conf(certs), f"aclfile {server_cfg / 'users.acl'}"], "tls")
    try:
        url = f"rediss://127.0.0.1:{server.port}"
        (server_cfg / "tls").mkdir()
        (server_cfg / "tls" / "ca.crt").write_bytes((certs / "ca.crt").read_bytes())
        (server_cfg / "config.yaml").write_text(
            yaml.safe_dump(
                {
                    "redis_url": url,
                    "redis_username": "trainer",
                    "redis_tls_ca": "tls/ca.crt",  # relative: to the config folder
                    "save_dir": str(tmp / "saves"),
                    "training": {"metrics_port": 0},
                    "telemetry": {"http_port": 0, "update_interval": 1},
                    "dqn": {"learning_starts": 200, "update_samples": 128},
                }
            )
        )
        client_cfg = make_config_dir(
            tmp / "client",
            {
                "redis_url": url,
                "redis_tls_ca": str(certs / "ca.crt"),
                "redis_tls_cert": str(certs / "client.crt"),
                "redis_tls_key": str(certs / "client.key"),
            },
        )
        (client_cfg / "redis.secret").write_bytes((tmp / "client.secret").read_bytes())
        cfg_args = ["--config-dir", str(server_cfg)]
        trainer = procs.start("node", "training", *cfg_args, name="trainer")
        telemetry = procs.start("node", "telemetry", *cfg_args, name="telemetry")
        client = procs.start(
            "client", "--config-dir", str(client_cfg), "--client-id", "c1", name="client"
        )
        admin = connect(
            RedisTarget(
                url=url, username="admin", password=users["admin"], tls_ca=str(certs / "ca.crt")
            )
        )

        def stats(key: str) -> dict[str, str]:
            return {k.decode(): v.decode() for k, v in admin.hgetall(key).items()}

        def progressed() -> bool:
            beat = json.loads(admin.get(K.heartbeat("c1")) or b"{}")
            trn, tel = stats(K.trainer_stats), stats(K.telemetry_stats)
            return (
                int(trn.get("accepted", 0)) >= 256
                and beat.get("model_id", 0) >= 1
                and int(tel.get("episodes", 0)) >= 1
            )

        logs = lambda: "\n".join(read_log(p)[-1500:] for p in (trainer, telemetry, client))  # noqa: E731
        wait_until(progressed, 90, f"the loop over TLS with ACL users\n{logs()}")
        for p in (trainer, telemetry, client):
            assert p.poll() is None, read_log(p)
            assert "NOPERM" not in read_log(p) and "no permissions" not in read_log(p)
        assert json.loads(stats(K.trainer_stats)["rejected_by_reason"]) == {}
        # every connection is over TLS and logged in as one of the two users
        logged_in = {c["user"] for c in admin.client_list() if c["id"] != str(admin.client_id())}
        assert logged_in == {"trainer", "client"}, admin.client_list()
        client.terminate()
        assert client.wait(30) == 0, read_log(client)
    finally:
        procs.stop_all()
        server.stop()


def test_tls_failures_are_one_line(tmp_path: Path, certs: Path) -> None:
    conf = [*tls_conf(certs), "requirepass a-long-tls-password-0123", "bind 127.0.0.1 127.0.0.2"]
    server = start_redis(tmp_path, conf)
    try:
        url = f"rediss://127.0.0.1:{server.port}"
        good = RedisTarget(
            url=url, password="a-long-tls-password-0123", tls_ca=str(certs / "ca.crt")
        )
        assert connect(good).ping()
        # no CA configured: the system CAs do not know ours
        with pytest.raises(ConnectionFailed) as info:
            connect(RedisTarget(url=url, password="x"), wait=5)
        assert "TLS with Redis at" in str(info.value) and "certificate verify failed" in str(
            info.value
        )
        assert "\n" not in str(info.value)
        # a certificate from another CA, and one that does not name the address used
        with pytest.raises(ConnectionFailed, match="certificate verify failed"):
            connect(RedisTarget(url=url, password="x", tls_ca=str(certs / "client.crt")))
        with pytest.raises(ConnectionFailed, match="mismatch"):
            connect(
                RedisTarget(
                    url=url.replace("127.0.0.1", "127.0.0.2"),
                    password="x",
                    tls_ca=str(certs / "ca.crt"),
                )
            )
        # plaintext to a TLS-only port does not get through
        with pytest.raises(ConnectionFailed):
            connect(RedisTarget(url=f"redis://127.0.0.1:{server.port}", password="x"))
    finally:
        server.stop()


# ---------------------------------------------------------------- compose's Redis entrypoint


def redis_entrypoint(tmp: Path, conf_text: str) -> tuple[list[str], Path]:
    """docker-compose.yaml's Redis entrypoint and command, runnable here: the container's
    /run/secrets and /tmp/secrets mapped to folders under `tmp`, the image's entrypoint a stub
    that runs its arguments, chown to `redis` dropped."""
    svc = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())["services"]["redis"]
    sh, flag, script, name = svc["entrypoint"]
    script = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", script).replace("$$", "$")
    secrets_in, secrets_out, bin_dir = tmp / "run_secrets", tmp / "secrets", tmp / "bin"
    for d in (secrets_in, bin_dir):
        d.mkdir()
    (secrets_in / "redis_conf").write_text(conf_text)
    stub = bin_dir / "docker-entrypoint.sh"
    stub.write_text('#!/bin/sh\nexec "$@"\n')
    stub.chmod(0o755)
    script = (
        script.replace("/run/secrets/", f"{secrets_in}/")
        .replace("/tmp/secrets", str(secrets_out))
        .replace("-o redis -g redis ", "")
        .replace("docker-entrypoint.sh redis-server", f"docker-entrypoint.sh {REDIS}")
    )
    command = [re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(c)) for c in svc["command"]]
    return [sh, flag, script, name, *command], bin_dir


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ("# no password here\nappendonly yes\n", "refusing to start without a password"),
        ("requirepass CHANGE-ME-to-a-long-random-password\n", "placeholder"),
    ],
)
def test_compose_redis_refuses_a_secret_without_password(tmp_path: Path, conf: str, message: str):
    argv, bin_dir = redis_entrypoint(tmp_path, conf)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 2 and message in out.stderr


@pytest.mark.parametrize("mode", ["requirepass", "acl"])
def test_compose_redis_loads_the_secret_as_its_config(tmp_path: Path, mode: str) -> None:
    if mode == "requirepass":
        conf, user, password = (
            "requirepass a-compose-password-0123\n",
            None,
            "a-compose-password-0123",
        )
    else:
        from soulsai.transport.acl import render_acl
        from soulsai.transport.secret import Secret

        if not _version or int(_version.group(1)) < 7:
            pytest.skip("ACL selectors need Redis >= 7.0")
        conf = render_acl(Secret(None, {"trainer": "t" * 24, "client": "c" * 24}), ["soulsai"])
        user, password = "trainer", "t" * 24
    argv, bin_dir = redis_entrypoint(tmp_path, conf)
    port = free_port()
    argv += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    log = tmp_path / "redis.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        r = wait_until(
            lambda: _try_connect(target(port, user, password)), 10, f"redis\n{log.read_text()}"
        )
        assert r.set(K.weights, b"w")
        if user is None:  # the shared password's user is all-powerful; compose's flags arrived
            assert r.config_get("appendonly") == {"appendonly": "yes"}
            assert r.config_get("maxmemory") == {"maxmemory": str(4 << 30)}
            assert r.config_get("proto-max-bulk-len") == {"proto-max-bulk-len": str(65 << 20)}
        else:
            with pytest.raises(redis.exceptions.NoPermissionError):
                r.config_get("appendonly")
        assert (tmp_path / "secrets" / "redis_conf").read_text() == conf
        assert oct((tmp_path / "secrets" / "redis_conf").stat().st_mode & 0o777) == "0o600"
        with pytest.raises(ConnectionFailed):
            connect(target(port, None, None))
    finally:
        proc.terminate()
        proc.wait(10)


def _try_connect(t: RedisTarget) -> redis.Redis | None:
    try:
        return connect(t, socket_timeout=2)
    except ConnectionFailed:
        return None
