"""The import contracts in pyproject.toml ([tool.importlinter], run by `lint-imports` in .ci/run)
catch a broken layer: run on a copy of the package, they pass as it is and fail, naming the
contract, once a role imports another role."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"


def _lint_imports() -> str:
    """The `lint-imports` of this interpreter's environment (the test extra installs it)."""
    exe = Path(sys.executable).parent / "lint-imports"
    found = str(exe) if exe.exists() else shutil.which("lint-imports")
    assert found, "lint-imports is missing: install the test extra (pip install -e '.[test]')"
    return found


def _package_copy(tmp_path: Path) -> Path:
    """A copy of soulsai/ under tmp_path/src, which the linter analyses instead of the tree."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "soulsai", src / "soulsai", ignore=shutil.ignore_patterns("__pycache__"))
    return src


def _run(src: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [_lint_imports(), "--no-cache", "--no-logo", str(PYPROJECT)],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _layers_contract_name() -> str:
    contracts = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    return next(c["name"] for c in contracts if c["type"] == "layers")


def test_lint_imports_passes_on_the_package_and_fails_naming_the_contract_when_client_imports_training(  # noqa: E501
    tmp_path: Path,
) -> None:
    src = _package_copy(tmp_path)
    kept = _run(src)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "0 broken" in kept.stdout

    client = src / "soulsai" / "client" / "__init__.py"
    client.write_text(client.read_text() + "\nimport soulsai.training  # noqa: E402,F401\n")
    broken = _run(src)
    out = broken.stdout + broken.stderr
    assert broken.returncode != 0, out
    assert f"{_layers_contract_name()} BROKEN" in " ".join(out.split()), out
    assert "soulsai.client -> soulsai.training" in out, out


def test_a_client_module_that_imports_torch_breaks_the_torch_free_contract(tmp_path: Path) -> None:
    src = _package_copy(tmp_path)
    twin = src / "soulsai" / "model" / "numpy_q.py"  # through it, every client module
    twin.write_text(twin.read_text() + "\nimport torch  # noqa: E402,F401\n")
    broken = _run(src)
    out = " ".join((broken.stdout + broken.stderr).split())
    assert broken.returncode != 0, out
    contracts = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    name = next(c["name"] for c in contracts if c["id"] == "torch-free-client")
    assert f"{name} BROKEN" in out, out
    assert "soulsai.client" in out and "soulsai.model.numpy_q -> torch" in out, out
