"""soulsai.train: lazily imported (import soulsai stays light and torch-free), and a bad
config is a ConfigError before anything starts. The real run: tests/integration/test_run_logs.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

import soulsai
from soulsai.errors import ConfigError


def test_import_soulsai_loads_neither_the_api_nor_torch_until_train_is_used():
    code = (
        "import sys, soulsai\n"
        "assert 'soulsai.api' not in sys.modules and 'torch' not in sys.modules\n"
        "from soulsai import train\n"
        "assert train.__module__ == 'soulsai.api' and 'torch' not in sys.modules\n"
        "try:\n    soulsai.nothing\nexcept AttributeError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "has no attribute 'nothing'" in out.stdout


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"overrides": ["dqn.lrr=0.1"]}, "dqn.lrr"),
        ({"algo": "a2c"}, "algo"),
        ({"clients": 65}, "clients"),
    ],
)
def test_a_bad_config_raises_config_error_and_starts_nothing(tmp_path, monkeypatch, kwargs, says):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=says):
        soulsai.train(save_dir=tmp_path / "saves", **kwargs)
    assert not (tmp_path / "saves").exists()
