"""Config loading: config_d.yaml <- config.yaml <- --set, one schema, one clear error.

Every bad input is a ConfigError (exit code 2) whose message names the key and where it came
from: the file, or `--set`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from soulsai.config import Config, load_config, parse_set
from soulsai.errors import ConfigError, SoulsaiError
from soulsai.transport.secret import PASSWORD_ENV, read_secret

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = ROOT / "config" / "config_d.yaml"


@pytest.fixture
def cdir(tmp_path: Path) -> Path:
    """A config folder holding only a copy of the shipped defaults."""
    d = tmp_path / "config"
    d.mkdir()
    shutil.copy(DEFAULTS, d / "config_d.yaml")
    return d


def write_user(cdir: Path, text: str) -> Path:
    path = cdir / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(cdir: Path | str, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(cdir, overrides)
    msg = str(info.value)
    assert "\n" not in msg, "a config error is one line"
    return msg


def defaults_dict() -> dict[str, Any]:
    return yaml.safe_load(DEFAULTS.read_text(encoding="utf-8"))


# ---------------------------------------------------------------- defaults


def test_defaults_alone_validate(cdir: Path) -> None:
    cfg = load_config(cdir)
    assert isinstance(cfg, Config)
    no_preset = {**defaults_dict(), "preset": None}  # none is shipped for DQN on CartPole
    assert cfg.model_dump(mode="json") == Config.model_validate(no_preset).model_dump(mode="json")
    assert cfg.algo == "dqn" and cfg.env.id == "CartPole-v1"
    assert cfg.redis_address == "localhost" and cfg.redis_port == 6379


def _missing_keys(model: type[BaseModel], data: Any, prefix: str) -> list[str]:
    missing = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        if not isinstance(data, dict) or name not in data:
            missing.append(key)
            continue
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            missing += _missing_keys(sub, data[name], f"{key}.")
    return missing


def test_every_schema_field_has_a_default_in_config_d() -> None:
    assert _missing_keys(Config, defaults_dict(), "") == []


def test_every_default_is_commented() -> None:
    for n, line in enumerate(DEFAULTS.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not stripped.endswith(":"):
            assert "#" in line, f"config_d.yaml line {n} has no comment: {line!r}"


def test_the_package_ships_the_same_defaults() -> None:
    shipped = ROOT / "soulsai" / "config" / "data" / "config_d.yaml"
    assert yaml.safe_load(shipped.read_text(encoding="utf-8")) == defaults_dict()


def test_empty_config_yaml_means_defaults(cdir: Path) -> None:
    base = load_config(cdir)
    write_user(cdir, "# nothing overridden yet\n")
    assert load_config(cdir) == base


# ---------------------------------------------------------------- merging


def test_config_yaml_deep_merges(cdir: Path) -> None:
    base = load_config(cdir)
    write_user(cdir, "dqn:\n  lr: 0.0005\nenv:\n  kwargs: {max_episode_steps: 100}\n")
    cfg = load_config(cdir)
    assert cfg.dqn.lr == 0.0005
    assert cfg.env.kwargs == {"max_episode_steps": 100}
    # siblings keep their defaults
    assert cfg.dqn.gamma == base.dqn.gamma and cfg.dqn.hidden == base.dqn.hidden
    assert cfg.env.id == base.env.id and cfg.client == base.client
    assert cfg.model_dump(exclude={"dqn": {"lr"}, "env": {"kwargs"}}) == base.model_dump(
        exclude={"dqn": {"lr"}, "env": {"kwargs"}}
    )


def test_lists_are_replaced_not_merged(cdir: Path) -> None:
    write_user(cdir, "dqn:\n  hidden: [32]\n")
    assert load_config(cdir).dqn.hidden == [32]


def test_set_wins_over_config_yaml(cdir: Path) -> None:
    write_user(cdir, "seed: 3\ndqn:\n  lr: 0.01\n  gamma: 0.9\n")
    cfg = load_config(cdir, ["dqn.lr=0.002"])
    assert cfg.dqn.lr == 0.002  # --set beats config.yaml
    assert cfg.dqn.gamma == 0.9  # config.yaml beats the defaults
    assert cfg.seed == 3
    assert load_config(cdir, ["seed=4", "seed=5"]).seed == 5  # the last --set wins


@pytest.mark.parametrize(
    "item, attr, expected",
    [
        ("seed=7", ("seed",), 7),
        ("dqn.lr=0.0005", ("dqn", "lr"), 0.0005),
        ("dqn.lr=5.0e-4", ("dqn", "lr"), 0.0005),
        ("dqn.throttle=false", ("dqn", "throttle"), False),
        ("dqn.normalize_obs=True", ("dqn", "normalize_obs"), True),
        ("target_return=null", ("target_return",), None),
        ("target_return=~", ("target_return",), None),
        ("target_return=-12.5", ("target_return",), -12.5),
        ("dqn.hidden=[64, 32]", ("dqn", "hidden"), [64, 32]),
        ("dqn.hidden=[8]", ("dqn", "hidden"), [8]),
        ("env.id=LunarLander-v3", ("env", "id"), "LunarLander-v3"),
        ("env.kwargs={render_mode: rgb_array}", ("env", "kwargs"), {"render_mode": "rgb_array"}),
        ("redis_url=redis://h:1/0", ("redis_url",), "redis://h:1/0"),
        ("key_prefix=exp_2", ("key_prefix",), "exp_2"),
    ],
)
def test_set_parses_yaml_scalars(
    cdir: Path, item: str, attr: tuple[str, ...], expected: Any
) -> None:
    value: Any = load_config(cdir, [item])
    for a in attr:
        value = getattr(value, a)
    assert value == expected and type(value) is type(expected)


def test_parse_set() -> None:
    assert parse_set("a.b=1") == (["a", "b"], 1)
    assert parse_set("a=x=y") == (["a"], "x=y")  # only the first '=' splits
    assert parse_set("a=") == (["a"], "")
    assert parse_set(" a.b =[1, 2.5, true, null]") == (["a", "b"], [1, 2.5, True, None])
    assert parse_set("a=[1,") == (["a"], "[1,")  # not YAML: kept as the raw string
    with pytest.raises(ConfigError, match="--set"):
        parse_set("a..b=1")


# ---------------------------------------------------------------- presets

PPO_LUNAR = ["algo=ppo", "env.id=LunarLander-v3"]
SHIPPED_PRESET = ROOT / "config" / "presets" / "ppo" / "LunarLander-v3.yaml"


def test_the_preset_of_algo_and_env_applies_by_itself(cdir: Path) -> None:
    cfg = load_config(cdir, PPO_LUNAR)
    preset = yaml.safe_load(SHIPPED_PRESET.read_text(encoding="utf-8"))
    assert cfg.preset is not None and Path(cfg.preset).name == "LunarLander-v3.yaml"
    assert cfg.env.num_envs == preset["env"]["num_envs"] == 8
    assert cfg.ppo.n_steps_total == preset["ppo"]["n_steps_total"] == 16384
    assert load_config(cdir).ppo.n_steps_total == 512
    assert cfg.target_return == 200.0
    assert cfg.ppo.clip_coef == defaults_dict()["ppo"]["clip_coef"]  # the rest: defaults
    assert load_config(cdir, ["algo=dqn", "env.id=LunarLander-v3"]).env.num_envs == 1


def test_config_yaml_and_set_override_the_preset(cdir: Path) -> None:
    write_user(cdir, "algo: ppo\nenv:\n  id: LunarLander-v3\nppo:\n  lr: 0.002\n")
    cfg = load_config(cdir, ["env.num_envs=4"])
    assert cfg.ppo.lr == 0.002 and cfg.env.num_envs == 4
    assert cfg.ppo.n_steps_total == 16384  # still the preset's


def test_preset_null_means_none(cdir: Path) -> None:
    cfg = load_config(cdir, [*PPO_LUNAR, "preset=null"])
    assert cfg.preset is None and cfg.env.num_envs == 1 and cfg.target_return == 475.0


def test_a_preset_in_the_config_folder_wins_over_the_shipped_one(cdir: Path) -> None:
    mine = cdir / "presets" / "ppo" / "LunarLander-v3.yaml"
    mine.parent.mkdir(parents=True)
    mine.write_text("ppo:\n  lr: 0.0001\n", encoding="utf-8")
    cfg = load_config(cdir, PPO_LUNAR)
    assert cfg.preset == str(mine) and cfg.ppo.lr == 0.0001 and cfg.env.num_envs == 1


def test_a_preset_named_by_file(cdir: Path) -> None:
    (cdir / "presets").mkdir()
    (cdir / "presets" / "fast.yaml").write_text("dqn:\n  lr: 0.003\n", encoding="utf-8")
    assert load_config(cdir, ["preset=fast.yaml"]).dqn.lr == 0.003
    msg = config_error(cdir, ["preset=slow.yaml"])
    assert "'preset'" in msg and "slow.yaml" in msg and "--set" in msg, msg


@pytest.mark.parametrize("text, key", [("algo: dqn\n", "algo"), ("env:\n  id: Foo-v0\n", "env.id")])
def test_a_preset_cannot_change_what_chose_it(cdir: Path, text: str, key: str) -> None:
    (cdir / "presets").mkdir()
    (cdir / "presets" / "odd.yaml").write_text(text, encoding="utf-8")
    msg = config_error(cdir, ["preset=odd.yaml"])
    assert f"'{key}'" in msg and str(cdir / "presets" / "odd.yaml") in msg, msg


def test_bad_value_in_a_preset_names_the_preset(cdir: Path) -> None:
    mine = cdir / "presets" / "ppo" / "LunarLander-v3.yaml"
    mine.parent.mkdir(parents=True)
    mine.write_text("ppo:\n  gamma: 7\n", encoding="utf-8")
    msg = config_error(cdir, PPO_LUNAR)
    assert "'ppo.gamma'" in msg and str(mine) in msg, msg


@pytest.mark.parametrize("item", ["env=5", "env=abc", "env=[1]", "algo=[1]"])
def test_a_bad_section_that_picks_the_preset_is_a_config_error(cdir: Path, item: str) -> None:
    msg = config_error(cdir, [item])
    assert "--set" in msg and f"'{item.split('=')[0]}" in msg, msg


def test_namespaced_env_ids_find_their_preset_in_a_folder(cdir: Path) -> None:
    mine = cdir / "presets" / "dqn" / "ALE" / "Pong-v5.yaml"
    mine.parent.mkdir(parents=True)
    mine.write_text("dqn:\n  lr: 0.0002\n", encoding="utf-8")
    cfg = load_config(cdir, ["env.id=ALE/Pong-v5"])
    assert cfg.preset == str(mine) and cfg.dqn.lr == 0.0002
    assert load_config(cdir, ["env.id=../../config_d"]).preset is None  # no way out of presets/


def test_every_shipped_preset_validates(cdir: Path) -> None:
    shipped = sorted((ROOT / "config" / "presets").glob("*/*.yaml"))
    assert shipped, "no presets shipped"
    shutil.copytree(ROOT / "config" / "presets", cdir / "presets")
    for path in shipped:
        algo, env = path.parent.name, path.stem
        cfg = load_config(cdir, [f"algo={algo}", f"env.id={env}"])
        assert cfg.preset == str(cdir / "presets" / algo / f"{env}.yaml")
    packaged = ROOT / "soulsai" / "config" / "data" / "presets"
    assert sorted(p.name for p in packaged.glob("*/*.yaml")) == sorted(p.name for p in shipped)


# ---------------------------------------------------------------- errors from config.yaml


@pytest.mark.parametrize(
    "text, key",
    [
        ("bogus: 1\n", "bogus"),  # unknown top-level key
        ("dqn:\n  gama: 0.9\n", "dqn.gama"),  # unknown nested key (a typo)
        ("env:\n  wrappers:\n    - {name: a.B, kwarg: {}}\n", "env.wrappers.0.kwarg"),
        ("dqn:\n  batch_size: lots\n", "dqn.batch_size"),  # wrong type
        ("dqn:\n  hidden: 64\n", "dqn.hidden"),
        ("seed: 1.5\n", "seed"),
        ("dqn: 5\n", "dqn"),  # a section replaced by a scalar
        ("dqn:\n  gamma: 2\n", "dqn.gamma"),  # out of range
        ("dqn:\n  gamma: 0\n", "dqn.gamma"),
        ("redis_port: 70000\n", "redis_port"),
        ("dqn:\n  target_update: sometimes\n", "dqn.target_update"),
        ("dqn:\n  hidden: []\n", "dqn.hidden"),
        ("redis_url: http://localhost\n", "redis_url"),
        ("key_prefix: 'has space'\n", "key_prefix"),
        ("env:\n  wrappers:\n    - {kwargs: {}}\n", "env.wrappers.0.name"),  # a required key
    ],
)
def test_bad_config_yaml_names_key_and_file(cdir: Path, text: str, key: str) -> None:
    path = write_user(cdir, text)
    msg = config_error(cdir)
    assert f"'{key}'" in msg, msg
    assert str(path) in msg, msg
    assert "config_d.yaml" not in msg, msg


def test_cross_field_error_names_the_file_that_caused_it(cdir: Path) -> None:
    path = write_user(cdir, "client:\n  heartbeat_timeout: 0.5\n")
    msg = config_error(cdir)
    assert "'client'" in msg and "heartbeat_timeout" in msg, msg
    assert str(path) in msg and "config_d.yaml" not in msg, msg


def test_cross_field_error_from_set(cdir: Path) -> None:
    msg = config_error(cdir, ["client.heartbeat_interval=30"])
    assert "'client'" in msg and "--set" in msg and "config_d.yaml" not in msg, msg


def test_yaml_syntax_error_names_file_and_line(cdir: Path) -> None:
    path = write_user(cdir, "seed: 1\ndqn:\n  lr: [0.1\n  gamma: 0.9\nalgo: dqn\n")
    msg = config_error(cdir)
    assert str(path) in msg and "line" in msg, msg
    assert "YAML" in msg


def test_yaml_tab_indentation_error(cdir: Path) -> None:
    path = write_user(cdir, "dqn:\n\tlr: 0.1\n")
    msg = config_error(cdir)
    assert str(path) in msg and "line 2" in msg, msg


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_config_yaml_must_be_a_mapping(cdir: Path, text: str) -> None:
    path = write_user(cdir, text)
    msg = config_error(cdir)
    assert str(path) in msg and "mapping" in msg, msg


def test_yaml_cannot_build_python_objects(cdir: Path) -> None:
    path = write_user(cdir, "seed: !!python/object/apply:os.getpid []\n")
    msg = config_error(cdir)
    assert str(path) in msg, msg


def test_bad_defaults_file_is_named(cdir: Path) -> None:
    (cdir / "config_d.yaml").write_text("seed: [\n", encoding="utf-8")
    msg = config_error(cdir)
    assert str(cdir / "config_d.yaml") in msg and "line" in msg, msg


def test_missing_key_in_defaults_is_named(cdir: Path) -> None:
    data = defaults_dict()
    del data["dqn"]["gamma"]
    (cdir / "config_d.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    msg = config_error(cdir)
    assert "'dqn.gamma'" in msg and "missing" in msg and "config_d.yaml" in msg, msg


def test_missing_config_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    msg = config_error(missing)
    assert str(missing) in msg and "--config-dir" in msg, msg


def test_config_dir_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file.yaml"
    f.write_text("seed: 1\n")
    msg = config_error(f)
    assert str(f) in msg and "--config-dir" in msg, msg


def test_several_errors_report_the_first_and_count_the_rest(cdir: Path) -> None:
    path = write_user(cdir, "bogus: 1\nseed: -1\n")
    msg = config_error(cdir)
    assert str(path) in msg and "(and 1 more)" in msg, msg


# ---------------------------------------------------------------- errors from --set


@pytest.mark.parametrize(
    "item, key",
    [
        ("dqn.gamma=2", "dqn.gamma"),
        ("dqn.lr=abc", "dqn.lr"),
        ("dqn.lr=", "dqn.lr"),
        ("dqn.gama=0.9", "dqn.gama"),
        ("nonsense=1", "nonsense"),
        ("dqn.batch_size=[1, 2]", "dqn.batch_size"),
        ("dqn.gamma.x=1", "dqn.gamma"),
        ("training.max_batch=0", "training.max_batch"),
    ],
)
def test_bad_set_names_key_and_set(cdir: Path, item: str, key: str) -> None:
    write_user(cdir, "seed: 1\n")
    msg = config_error(cdir, [item])
    assert f"'{key}'" in msg and "--set" in msg, msg
    assert "config.yaml" not in msg and "config_d.yaml" not in msg, msg


@pytest.mark.parametrize("item", ["dqn.lr", "dqn.lr:0.1", "", "=5", ".a=1", "a.=1"])
def test_malformed_set(cdir: Path, item: str) -> None:
    msg = config_error(cdir, [item])
    assert "--set" in msg and repr(item) in msg, msg


def test_set_conflicting_with_itself(cdir: Path) -> None:
    msg = config_error(cdir, ["dqn=1", "dqn.lr=0.1"])
    assert "--set" in msg and "dqn" in msg, msg


def test_config_error_exit_code(cdir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(cdir, ["dqn.gamma=2"])
    assert info.value.exit_code == 2 and ConfigError.exit_code == 2
    assert isinstance(info.value, SoulsaiError)


# ---------------------------------------------------------------- command line


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != PASSWORD_ENV}
    env["PYTHONWARNINGS"] = "ignore"
    return subprocess.run(
        [sys.executable, "-m", "soulsai", "train", *args, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )


def test_cli_bad_config_yaml_exits_2_with_one_line(cdir: Path, tmp_path: Path) -> None:
    path = write_user(cdir, "dqn:\n  gama: 0.9\n")
    proc = run_cli(tmp_path, "--config-dir", str(cdir))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "'dqn.gama'" in lines[0] and str(path) in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "saves").exists(), "nothing may start on a config error"


def test_cli_bad_set_exits_2_with_one_line(cdir: Path, tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "--config-dir", str(cdir), "--set", "dqn.lr=abc")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "'dqn.lr'" in lines[0] and "--set" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "saves").exists()


def test_cli_missing_config_dir_exits_2(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "--config-dir", str(tmp_path / "missing"))
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--config-dir" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- the secret file


def test_read_secret_good_file(tmp_path: Path) -> None:
    path = tmp_path / "redis.secret"
    path.write_text("requirepass s3cr3t-P4ss\n", encoding="utf-8")
    assert read_secret(path) == "s3cr3t-P4ss"
    path.write_text("# the Redis password\n\n  requirepass   other  \n", encoding="utf-8")
    assert read_secret(path) == "other"


def test_read_secret_missing_file(tmp_path: Path) -> None:
    assert read_secret(tmp_path / "redis.secret") is None


@pytest.mark.parametrize(
    "content",
    [
        "",
        "\n# only a comment\n",
        "requirepass\n",
        "password hunter2\n",
        "requirepass a b\n",
        "requirepass a\nrequirepass b\n",
        "hunter2\n",
    ],
)
def test_read_secret_malformed_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "redis.secret"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        read_secret(path)
    assert str(path) in str(info.value)
    assert info.value.exit_code == 2


def test_read_secret_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "redis.secret"
    path.write_bytes(b"requirepass \xff\xfe\n")
    with pytest.raises(ConfigError, match="redis.secret"):
        read_secret(path)
