"""The secret file, the exposure check, TLS settings and the ACL renderer (no Redis needed)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
from pathlib import Path

import pytest

from soulsai.config import load_config
from soulsai.errors import ConfigError
from soulsai.transport import acl
from soulsai.transport import secret as secret_file
from soulsai.transport.connection import RedisTarget, check_exposure, is_loopback
from soulsai.transport.secret import PASSWORD_ENV, Secret, pick_credentials, read_credentials

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    monkeypatch.setattr(secret_file, "_warned", set())
    d = tmp_path / "config"
    d.mkdir()
    shutil.copy(ROOT / "config" / "config_d.yaml", d / "config_d.yaml")
    return d


def target(cdir: Path, *sets: str) -> RedisTarget:
    return RedisTarget.from_config(load_config(cdir, list(sets)), cdir)


# ---------------------------------------------------------------- the secret file


def test_secret_with_acl_users(tmp_path: Path) -> None:
    path = tmp_path / "redis.secret"
    path.write_text("# server\nuser trainer t-pass\nuser client-pc2 c-pass\n")
    assert read_credentials(path) == Secret(None, {"trainer": "t-pass", "client-pc2": "c-pass"})
    path.write_text("requirepass shared\nuser client c\n")
    assert read_credentials(path) == Secret("shared", {"client": "c"})


@pytest.mark.parametrize(
    "content",
    [
        "user trainer\n",
        "user trainer a b\n",
        "user tr@iner pw\n",
        "user client a\nuser client b\n",
        "requirepass a\nrequirepass b\n",
        "requirepass CHANGE-ME-to-a-long-random-password\n",
    ],
)
def test_malformed_secrets_name_the_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "redis.secret"
    path.write_text(content)
    with pytest.raises(ConfigError, match="redis.secret") as info:
        read_credentials(path)
    assert info.value.exit_code == 2


def test_the_example_secret_parses_and_is_refused_as_is() -> None:
    with pytest.raises(ConfigError, match="placeholder"):
        read_credentials(ROOT / "config" / "redis.secret.example")


def test_which_credentials_a_process_uses() -> None:
    both = Secret("shared", {"trainer": "t", "client": "c"})
    assert pick_credentials(both, None, None) == (None, "shared")
    assert pick_credentials(both, "trainer", None) == ("trainer", "t")
    only_client = Secret(None, {"client": "c"})
    assert pick_credentials(only_client, None, None) == ("client", "c")
    assert pick_credentials(None, "client", None) == ("client", None)
    # a child process gets the password from its parent and only needs the name
    assert pick_credentials(only_client, "trainer", None, password_given=True) == ("trainer", None)
    with pytest.raises(ConfigError, match="redis_username"):
        pick_credentials(Secret(None, {"trainer": "t", "client": "c"}), None, Path("x"))
    with pytest.raises(ConfigError, match="'user admin <password>'"):
        pick_credentials(only_client, "admin", Path("x"))


def test_from_config_reads_user_and_env_password(cdir: Path, monkeypatch) -> None:
    (cdir / "redis.secret").write_text("user trainer t-password-long-enough\nuser client c\n")
    t = target(cdir, "redis_username=trainer")
    assert (t.username, t.password) == ("trainer", "t-password-long-enough")
    monkeypatch.setenv(PASSWORD_ENV, "from-parent")
    t = target(cdir, "redis_username=trainer")
    assert (t.username, t.password) == ("trainer", "from-parent")


def test_short_password_warns_once(cdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    (cdir / "redis.secret").write_text("requirepass short\n")
    with caplog.at_level(logging.WARNING):
        target(cdir)
        target(cdir)
    warnings = [r for r in caplog.records if "at least 16" in r.getMessage()]
    assert len(warnings) == 1 and "5 characters" in warnings[0].getMessage()
    caplog.clear()
    (cdir / "redis.secret").write_text("requirepass " + "x" * 16 + "\n")
    secret_file._warned.clear()
    with caplog.at_level(logging.WARNING):
        target(cdir)
    assert not caplog.records


# ---------------------------------------------------------------- exposure


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("[::1]", True),
        ("redis", False),
        ("0.0.0.0", False),
        ("10.0.0.5", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_remote_redis_without_password_is_refused(cdir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        target(cdir, "redis_address=10.0.0.5")
    msg = str(info.value)
    assert info.value.exit_code == 2 and "\n" not in msg
    assert "10.0.0.5:6379" in msg and "redis.secret" in msg and "redis_allow_insecure" in msg
    with pytest.raises(ConfigError, match="no password"):
        target(cdir, "redis_url=redis://redis.example.org:6379/0")
    # the opt-out, a password in the secret or in the URL, or a local Redis: all allowed
    target(cdir, "redis_address=10.0.0.5", "redis_allow_insecure=true")
    target(cdir, "redis_url=redis://:pw-in-the-url@redis.example.org:6379")
    target(cdir, "redis_address=127.0.0.1")
    (cdir / "redis.secret").write_text("requirepass a-long-enough-password\n")
    target(cdir, "redis_address=10.0.0.5")


def test_check_exposure_directly() -> None:
    check_exposure(RedisTarget(host="localhost"), allow_insecure=False)
    with pytest.raises(ConfigError):
        check_exposure(RedisTarget(url="rediss://h.example:6380"), allow_insecure=False)


# ---------------------------------------------------------------- TLS settings


def test_tls_paths_resolve_against_the_config_dir(cdir: Path) -> None:
    (cdir / "tls").mkdir()
    for name in ("ca.crt", "client.crt", "client.key"):
        (cdir / "tls" / name).write_text("-")
    t = target(
        cdir,
        "redis_url=rediss://127.0.0.1:6380",
        "redis_tls_ca=tls/ca.crt",
        "redis_tls_cert=tls/client.crt",
        f"redis_tls_key={cdir / 'tls' / 'client.key'}",
    )
    assert t.tls and t.tls_ca == str(cdir / "tls" / "ca.crt")
    assert t.tls_cert == str(cdir / "tls" / "client.crt")
    assert t.tls_key == str(cdir / "tls" / "client.key")
    assert not target(cdir).tls


@pytest.mark.parametrize(
    ("sets", "match"),
    [
        (["redis_url=rediss://127.0.0.1:6380", "redis_tls_ca=missing.crt"], "redis_tls_ca"),
        (["redis_tls_ca=tls/ca.crt"], "rediss://"),
        (["redis_url=redis://127.0.0.1:6380", "redis_tls_ca=tls/ca.crt"], "rediss://"),
        (["redis_url=rediss://127.0.0.1:6380", "redis_tls_cert=tls/ca.crt"], "go together"),
    ],
)
def test_tls_misconfiguration_is_one_config_error(cdir: Path, sets: list[str], match: str) -> None:
    (cdir / "tls").mkdir()
    (cdir / "tls" / "ca.crt").write_text("-")
    with pytest.raises(ConfigError, match=match):
        target(cdir, *sets)


# ---------------------------------------------------------------- ACL users


def test_every_key_is_classified_for_the_acl() -> None:
    """A new key in keys.py must be granted to clients, or marked trainer-only, in acl.py."""
    members = set(acl.keys_members())
    grants = set(acl.CLIENT_GRANTS)
    channels = set(acl.CLIENT_CHANNELS)
    assert not grants & channels and not grants & acl.TRAINER_ONLY
    assert not channels & acl.TRAINER_ONLY
    unclassified = members - grants - channels - acl.TRAINER_ONLY
    assert not unclassified, (
        f"classify these Keys members in soulsai/transport/acl.py: {unclassified}"
    )
    assert not (grants | channels | acl.TRAINER_ONLY) - members, "acl.py names a key keys.py lost"


def test_rendered_acl() -> None:
    secret = Secret(None, {"trainer": "t" * 20, "client": "c" * 20, "client-pc2": "d" * 20})
    text = acl.render_acl(secret, ["exp1", "exp2"])
    lines = text.splitlines()
    assert lines[0] == "user default reset off"
    assert not any(line.startswith("#") for line in lines), "an aclfile may not hold comments"
    assert "t" * 20 not in text and "c" * 20 not in text, "hashes only, never a password"
    trainer = next(line for line in lines if line.startswith("user trainer "))
    assert "#" + hashlib.sha256(b"t" * 20).hexdigest() in trainer
    assert "~exp1:* &exp1:* ~exp2:* &exp2:*" in trainer and "-@dangerous" in trainer
    client = next(line for line in lines if line.startswith("user client "))
    assert "(%W~exp1:samples +lpush +ltrim)" in client
    assert "(%R~exp2:weights +strlen +getrange +get)" in client and "&exp2:commands" in client
    assert "+select" not in client and "+incrby" not in client and "-select" in trainer
    assert "(%W~exp1:client:* +set)" in client
    assert "~exp1:*" not in client and "+@all" not in client
    assert any(line.startswith("user client-pc2 ") for line in lines)


def test_render_needs_trainer_and_client_and_known_roles() -> None:
    with pytest.raises(ConfigError, match="'user client <password>'"):
        acl.render_acl(Secret(None, {"trainer": "t"}), ["p"])
    with pytest.raises(ConfigError, match="'root'"):
        acl.render_acl(Secret(None, {"trainer": "t", "client": "c", "root": "r"}), ["p"])


def test_write_acl_generates_users_and_a_client_secret(tmp_path: Path) -> None:
    cdir = tmp_path / "config"
    cdir.mkdir()
    (cdir / "redis.secret").write_text("requirepass kept-as-it-was-0123")
    res = acl.write_acl(cdir, ["soulsai"], generate=True, client_secret=tmp_path / "c.secret")
    assert res.generated == ["trainer", "client"]
    secret = read_credentials(cdir / "redis.secret")
    assert secret is not None and secret.requirepass == "kept-as-it-was-0123"
    assert set(secret.users) == {"trainer", "client"}
    assert all(len(pw) >= 32 for pw in secret.users.values())
    client_file = read_credentials(tmp_path / "c.secret")
    assert client_file == Secret(None, {"client": secret.users["client"]})
    for path in (cdir / "redis.secret", cdir / "users.acl", tmp_path / "c.secret"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    again = acl.write_acl(cdir, ["soulsai"], generate=True)
    assert again.generated == [] and read_credentials(cdir / "redis.secret") == secret
    with pytest.raises(ConfigError, match="soulsai acl --generate"):
        acl.write_acl(tmp_path, ["soulsai"])
