"""Config is data: code-bearing keys are local, credentials never stored, presets stay in their
folders, run folders hold no links, the secret file is read the way Redis reads it.

The code tests use a marker module: importing it writes a marker file, so a test sees whether
anything imported a module that a foreign source (Redis, a run folder, a preset) named.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from soulsai import evaluate as ev
from soulsai.config import Config, load_config
from soulsai.config.trust import published_json, received_config, redact_url
from soulsai.envs import make_single_env
from soulsai.errors import ConfigError
from soulsai.training import resume
from soulsai.transport.secret import read_credentials, split_config_line
from tests.conftest import marker_module

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cdir(config_dir: Path) -> Path:
    return config_dir


@pytest.fixture
def marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """(module name, marker file): a fresh module on sys.path whose import writes the file."""
    name, mods, flag = marker_module(tmp_path)
    monkeypatch.syspath_prepend(str(mods))
    return name, flag


def hostile(base: Config, module: str) -> dict:
    """`base` as a foreign source would hand it over: naming the marker module as code."""
    data = json.loads(base.model_dump_json())
    data["env"]["imports"] = [module]
    data["env"]["wrappers"] = [{"name": f"{module}.Wrap", "kwargs": {}}]
    return data


# ---------------------------------------------------------------- what a client receives


def test_a_client_takes_code_keys_from_its_own_config_only(
    cdir: Path, marker: tuple[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    module, flag = marker
    local = load_config(
        cdir,
        ["env.wrappers=[{name: gymnasium.wrappers.TimeLimit, kwargs: {max_episode_steps: 7}}]"],
    )
    raw = json.dumps(hostile(load_config(cdir, ["seed=9"]), module))
    cfg = received_config(raw, local)
    assert cfg.seed == 9  # the data is taken
    assert cfg.env.imports == [] and [w.name for w in cfg.env.wrappers] == [
        "gymnasium.wrappers.TimeLimit"
    ]
    assert f"{module}.Wrap" in caplog.text and "ignored" in caplog.text
    env = make_single_env(cfg.env)
    env.close()
    assert not flag.exists(), "a module named in Redis was imported"


def test_a_received_env_id_that_imports_a_module_needs_the_local_config_to_name_it(
    cdir: Path, marker: tuple[str, Path]
) -> None:
    module, flag = marker
    data = json.loads(load_config(cdir).model_dump_json())
    data["env"]["id"] = f"{module}:Foo-v0"
    with pytest.raises(ConfigError) as info:
        received_config(json.dumps(data), load_config(cdir))
    msg = str(info.value)
    assert "\n" not in msg and f"{module}:Foo-v0" in msg and "env.id" in msg, msg
    assert not flag.exists()
    same = load_config(cdir, [f"env.id={module}:Foo-v0"])
    assert received_config(json.dumps(data), same).env.id == f"{module}:Foo-v0"


def test_the_published_config_is_data_without_credentials(cdir: Path) -> None:
    cfg = load_config(
        cdir,
        [
            "redis_url=redis://trainer:hunter2-secret@db.example:6380/0",
            "env.imports=[gymnasium]",
            "env.wrappers=[{name: gymnasium.wrappers.TimeLimit, kwargs: {max_episode_steps: 5}}]",
        ],
    )
    published = published_json(cfg)
    assert "hunter2-secret" not in published and "trainer:" not in published
    data = json.loads(published)
    assert data["env"]["imports"] == [] and data["env"]["wrappers"] == []
    assert data["redis_url"] == "redis://db.example:6380/0"
    assert cfg.redis_url and "hunter2-secret" in cfg.redis_url  # this process keeps it
    assert "hunter2-secret" not in json.dumps(cfg.model_dump()) + cfg.model_dump_json()


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("redis://:pw@h:1/0", "redis://h:1/0"),
        ("rediss://u:p@ss@h", "rediss://h"),
        ("redis://h:1", "redis://h:1"),
        ("redis://h:1/0?password=pw-q&db=2", "redis://h:1/0?db=2"),  # redis-py logs in with it
        ("redis://h/0?username=u&password=pw-q", "redis://h/0"),
        ("redis://u:pw#q@h:1/0", "redis://h:1/0"),  # a bare '#' in the password
        ("redis://h:1/0?socket_timeout=5#x", "redis://h:1/0?socket_timeout=5"),
        (None, None),
    ],
)
def test_redact_url(url: str | None, want: str | None) -> None:
    assert redact_url(url) == want


def test_a_password_in_the_url_query_is_neither_published_nor_printed(cdir: Path) -> None:
    from soulsai.transport.connection import RedisTarget, check_exposure

    url = "redis://db.example:6380/0?password=hunter2-in-query"
    cfg = load_config(cdir, [f"redis_url={url}"])
    assert "hunter2" not in published_json(cfg) + cfg.model_dump_json()
    target = RedisTarget(url=cfg.redis_url)
    assert "hunter2" not in target.describe()
    check_exposure(target, allow_insecure=False)  # it is a password: not "none configured"


def test_no_file_of_a_run_folder_holds_the_redis_password(tmp_path: Path, cdir: Path) -> None:
    from soulsai import run as runfolder
    from soulsai.training.saves import Saves
    from tests.unit.test_saves import FakeNode

    cfg = load_config(
        cdir, ["redis_url=redis://default:pw-in-url-0123@127.0.0.1:1/0", "dqn.hidden=[8]"]
    )
    run = tmp_path / "run"
    run.mkdir()
    runfolder.atomic_write_json(run / runfolder.CONFIG_FILE, cfg.model_dump())  # as cli/local
    saves = Saves(cfg, run, FakeNode(cfg))
    for kind in ("periodic", "best", "manual"):
        assert saves.save(kind).ok
    files = [p for p in run.rglob("*") if p.is_file()]
    assert len(files) > 6
    for path in files:
        assert b"pw-in-url-0123" not in path.read_bytes(), path


# ---------------------------------------------------------------- presets


@pytest.mark.parametrize("key", ["imports", "wrappers"])
def test_a_preset_cannot_name_code(cdir: Path, key: str) -> None:
    value = "[os]" if key == "imports" else "[{name: os.system}]"
    preset = cdir / "presets" / "dqn" / "CartPole-v1.yaml"
    preset.parent.mkdir(parents=True)
    preset.write_text(f"env:\n  {key}: {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(cdir)
    msg = str(info.value)
    assert f"'env.{key}'" in msg and str(preset) in msg and "\n" not in msg, msg


@pytest.mark.parametrize(
    "name", ["/etc/passwd", "../config_d.yaml", "dqn/../../config_d.yaml", "..\\x.yaml"]
)
def test_a_preset_resolves_only_inside_the_presets_folders(
    cdir: Path, tmp_path: Path, name: str
) -> None:
    (cdir / "presets").mkdir()
    with pytest.raises(ConfigError) as info:
        load_config(cdir, [f"preset={name}"])
    msg = str(info.value)
    assert "'preset'" in msg and "presets/" in msg and "\n" not in msg, msg
    assert "root:" not in msg


def test_a_preset_link_out_of_the_presets_folder_is_refused(cdir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.yaml"
    outside.write_text("private_key_line: do-not-echo\n")
    (cdir / "presets").mkdir()
    (cdir / "presets" / "evil.yaml").symlink_to(outside)
    with pytest.raises(ConfigError) as info:
        load_config(cdir, ["preset=evil.yaml"])
    assert "do-not-echo" not in str(info.value) and "private_key_line" not in str(info.value)
    (cdir / "presets" / "fine.yaml").write_text("dqn:\n  lr: 0.002\n")
    assert load_config(cdir, ["preset=fine.yaml"]).dqn.lr == 0.002
    assert load_config(cdir, ["preset=dqn/LunarLander-v3.yaml"]).dqn.hidden == [256, 256]


# ---------------------------------------------------------------- wrappers that fail


@pytest.mark.parametrize(
    ("wrapper", "reason"),
    [
        ("{name: gymnasium.wrappers.TimeLimit, kwargs: {max_steps_typo: 5}}", "TypeError"),
        ("{name: no_such_module_x.Wrapper}", "ModuleNotFoundError"),
        ("{name: gymnasium.wrappers.NoSuchWrapper}", "AttributeError"),
    ],
)
def test_a_failing_wrapper_names_its_key_and_file(cdir: Path, wrapper: str, reason: str) -> None:
    user = cdir / "config.yaml"
    user.write_text(f"env:\n  wrappers:\n    - {wrapper}\n")
    with pytest.raises(ConfigError) as info:
        make_single_env(load_config(cdir).env)
    msg = str(info.value)
    assert "env.wrappers[0]" in msg and str(user) in msg and reason in msg, msg
    assert "\n" not in msg


# ---------------------------------------------------------------- run folders


def _run_with_code(tmp_path: Path, cdir: Path, module: str, *sets: str) -> Path:
    """A run folder with a checkpoint whose config.json names the marker module as code."""
    from soulsai.training.saves import Saves
    from tests.unit.test_saves import FakeNode

    base = load_config(cdir, ["dqn.hidden=[16, 16]", *sets])
    crafted = Config.model_validate(hostile(base, module))
    run = tmp_path / "saves" / "2026-01-01_00-00-00_dqn_x"
    run.mkdir(parents=True)
    (run / "config.json").write_text(crafted.model_dump_json())
    Saves(crafted, run, FakeNode(crafted)).save("periodic")
    Saves(crafted, run, FakeNode(crafted)).save("best")
    return run


def test_resume_takes_code_keys_from_this_machine(
    tmp_path: Path, cdir: Path, marker: tuple[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    module, flag = marker
    run = _run_with_code(tmp_path, cdir, module)
    fresh = load_config(cdir)
    cfg, _ = resume.resume_config(fresh, cdir, [], resume.find(run, "x"))
    assert cfg.env.imports == [] and cfg.env.wrappers == []
    assert cfg.dqn.hidden == [16, 16]  # the run's data still continues
    assert f"{module}.Wrap" in caplog.text and "not imported" in caplog.text
    make_single_env(cfg.env).close()
    assert not flag.exists(), "resume imported a module the run folder named"


def test_resume_refuses_a_saved_env_id_that_imports_a_module(
    tmp_path: Path, cdir: Path, marker: tuple[str, Path]
) -> None:
    module, flag = marker
    env_id = f"{module}:Foo-v0"
    run = _run_with_code(tmp_path, cdir, module, f"env.id={env_id}")
    point = resume.find(run, "x")
    with pytest.raises(ConfigError) as info:
        resume.resume_config(load_config(cdir), cdir, [], point)
    assert env_id in str(info.value) and "imports module" in str(info.value)
    sets = [f"env.id={env_id}"]  # named on this machine: taken
    assert resume.resume_config(load_config(cdir, sets), cdir, sets, point)[0].env.id == env_id
    assert not flag.exists()


def test_evaluate_takes_code_keys_from_this_machine(
    tmp_path: Path, cdir: Path, marker: tuple[str, Path]
) -> None:
    module, flag = marker
    run = _run_with_code(tmp_path, cdir, module)
    notes: list[str] = []
    cfg = ev.checkpoint_config(run / "best_model", [], load_config(cdir), notes)
    assert cfg.env.imports == [] and cfg.env.wrappers == []
    assert len(notes) == 1 and f"{module}.Wrap" in notes[0] and "not imported" in notes[0]
    assert len(ev.evaluate(run / "best_model", cfg, 1, seed=0).returns) == 1
    assert not flag.exists(), "evaluate imported a module the run folder named"


@pytest.mark.parametrize("what", ["episodes.jsonl", "logs", "checkpoint/state.json"])
def test_resume_refuses_symlinks_inside_the_run_folder(
    tmp_path: Path, cdir: Path, what: str
) -> None:
    from soulsai.training.saves import Saves
    from tests.unit.test_saves import FakeNode

    cfg = load_config(cdir, ["dqn.hidden=[8]"])
    run = tmp_path / "saves" / "run"
    run.mkdir(parents=True)
    (run / "config.json").write_text(cfg.model_dump_json())
    Saves(cfg, run, FakeNode(cfg)).save("periodic")
    victim = tmp_path / "victim"
    victim.mkdir()
    link = run / what
    if link.exists():
        link.unlink()
    link.symlink_to(victim / "x" if what != "logs" else victim)
    for arg in (run, run / "checkpoint"):
        with pytest.raises(ConfigError) as info:
            resume.find(arg, "x")
        assert "symlink" in str(info.value) and str(link) in str(info.value)
    os.unlink(link)
    if what == "checkpoint/state.json":
        return
    assert resume.find(run, "x").run_dir == run


# ---------------------------------------------------------------- the secret file


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("requirepass pw", ["requirepass", "pw"]),
        ('requirepass "p w"', ["requirepass", "p w"]),
        ('requirepass "a\\"b\\x41\\n"', ["requirepass", 'a"bA\n']),
        ("requirepass 'it\\'s'", ["requirepass", "it's"]),
        ("  requirepass   'a\"b'  ", ["requirepass", 'a"b']),
        ('requirepass "pw', None),
        ('requirepass "pw"x', None),
        ("requirepass 'pw", None),
    ],
)
def test_split_config_line_like_redis(line: str, words: list[str] | None) -> None:
    assert split_config_line(line) == words


def test_a_quoted_password_loses_its_quotes(tmp_path: Path) -> None:
    path = tmp_path / "redis.secret"
    path.write_text("requirepass \"a long password with spaces\"\nuser client 'c-pw'\n")
    secret = read_credentials(path)
    assert secret is not None and secret.requirepass == "a long password with spaces"
    assert secret.users == {"client": "c-pw"}
    path.write_text('requirepass "unbalanced\n')
    with pytest.raises(ConfigError, match="quotes"):
        read_credentials(path)
