"""The commands around a run: `quicksave` (ask the training node for a save), `evaluate` (play
a saved agent), `acl` (Redis users) and `compare` (several runs' returns in one figure)."""

from __future__ import annotations

from pathlib import Path

import click

from soulsai.cli.common import load_options, need_server, setup_logging
from soulsai.config import default_config_dir, load_config


@click.command()
@click.option(
    "--config-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder with config_d.yaml, config.yaml and redis.secret.",
)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config key.")
@click.option(
    "--save-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="save_dir of a `soulsai train` running from here (finds its private Redis).",
)
@click.option("--buffer", is_flag=True, help="Also save the replay buffer.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1.0),
    default=120.0,
    show_default=True,
    help="Seconds to wait for the training node to confirm the save.",
)
@click.option("--no-wait", is_flag=True, help="Send the request and return at once.")
def quicksave(
    config_dir: Path | None,
    sets: tuple[str, ...],
    save_dir: Path | None,
    buffer: bool,
    timeout: float,
    no_wait: bool,
) -> None:
    """Ask the running training node to save into <run>/manual_save now, and wait until it has.

    Works against a `soulsai train` started from this directory (its private Redis) or
    against any server through the configured Redis and redis.secret.
    """
    from soulsai.quicksave import request_quicksave

    cfg, cdir, _ = load_options(config_dir, sets, save_dir=save_dir)
    click.echo(request_quicksave(cfg, cdir, buffer, timeout=timeout, wait=not no_wait))


@click.command()
@click.argument("run_dir", metavar="RUN_DIR")
@click.option(
    "--model",
    type=click.Choice(["best", "latest", "manual"]),
    default=None,
    help="best_model/, checkpoint/ or manual_save/ [default: best, else latest].",
)
@click.option(
    "--episodes", type=click.IntRange(1, 100000), default=10, show_default=True, help="Episodes."
)
@click.option(
    "--render",
    type=click.Choice(["rgb_array", "human"]),
    default=None,
    help="Gymnasium render mode (human opens a window; --video needs rgb_array).",
)
@click.option(
    "--video",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    metavar="DIR",
    help="Write each episode as DIR/episode-NNN.gif.",
)
@click.option("--seed", type=int, default=None, help="Seed of the first episode [config seed].")
@click.option(
    "--save-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where `latest` looks for run folders [the configured save_dir].",
)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a saved key.")
@click.option(
    "--config-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="This machine's config: the only source of env.imports and env.wrappers "
    "[default: ./config, else the packaged defaults].",
)
def evaluate(
    run_dir: str,
    model: str | None,
    episodes: int,
    render: str | None,
    video: Path | None,
    seed: int | None,
    save_dir: Path | None,
    sets: tuple[str, ...],
    config_dir: Path | None,
) -> None:
    """Play a saved agent's deterministic policy (greedy DQN, mean-action PPO) without Redis.

    RUN_DIR is a run folder, one of its checkpoint folders, or `latest`. Prints each episode's
    return and then the mean and standard deviation. The env's imports and wrappers come from
    this machine's config, never from the run folder (what it asked for is shown).
    """
    need_server("evaluate")
    from soulsai import evaluate as ev

    if video is not None and render == "human":
        raise click.UsageError("--video needs --render rgb_array")
    local = load_config(config_dir if config_dir is not None else default_config_dir(), sets)
    if save_dir is None and run_dir == "latest":
        save_dir = Path(local.save_dir)
    folder, note = ev.locate(run_dir, model, save_dir or ".")
    if note:
        click.echo(note, err=True)
    notes: list[str] = []
    cfg = ev.checkpoint_config(folder, sets, local, notes)
    for line in notes:
        click.echo(line, err=True)
    first = cfg.seed + 10_000 if seed is None else seed  # not the seeds the clients trained on
    click.echo(f"evaluating {folder} ({cfg.algo} on {cfg.env.id}, {episodes} episodes)")

    def show(i: int, ret: float, length: int) -> None:
        click.echo(f"episode {i + 1}: return {ret:.2f}, length {length}")

    result = ev.evaluate(folder, cfg, episodes, first, render, video, on_episode=show)
    s = result.summary
    info = f"model_id {s.get('model_id')}, env_steps {s.get('env_steps')}"
    if s.get("value") is not None:
        info += f", saved at {s.get('metric', 'return')} {s['value']:.2f}"
    for path in result.videos:
        click.echo(f"video: {path}")
    click.echo(
        f"mean return {result.mean:.2f} +/- {result.std:.2f} over {episodes} episodes ({info})"
    )


@click.command()
@click.option(
    "--config-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder with redis.secret (and the config, for key_prefix).",
)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config key.")
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="ACL file to write [default: <config-dir>/users.acl].",
)
@click.option(
    "--generate",
    is_flag=True,
    help="First add 'user trainer' and 'user client' lines with fresh passwords to "
    "redis.secret where missing.",
)
@click.option(
    "--client-secret",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write a secret file for client machines holding only the client user.",
)
@click.option(
    "--prefix",
    "prefixes",
    multiple=True,
    help="Key prefix the users may use (repeatable) [default: key_prefix].",
)
def acl(
    config_dir: Path | None,
    sets: tuple[str, ...],
    out: Path | None,
    generate: bool,
    client_secret: Path | None,
    prefixes: tuple[str, ...],
) -> None:
    """Write Redis ACL users (trainer, client, optional admin) from redis.secret.

    The file holds password hashes only; Redis >= 7.0 loads it (`aclfile` or as a config
    file). Nodes then log in with redis_username: trainer, clients with redis_username:
    client (see docs/deployment.md).
    """
    from soulsai.transport.acl import write_acl

    cfg, cdir, _ = load_options(config_dir, sets)
    setup_logging()
    res = write_acl(cdir, list(prefixes) or [cfg.key_prefix], out, generate, client_secret)
    if res.generated:
        click.echo(f"added users {', '.join(res.generated)} to {cdir / 'redis.secret'}")
    click.echo(f"wrote {res.acl_file} (users: default off, {', '.join(res.users)})")
    if res.client_secret:
        click.echo(f"wrote {res.client_secret}: copy it to client machines as config/redis.secret")


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN_DIR...")
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("compare.png"),
    show_default=True,
    help="Figure to write (.png, .pdf or .svg).",
)
@click.option(
    "--window",
    type=click.IntRange(1, 100000),
    default=20,
    show_default=True,
    help="Episodes in the moving average (the bold lines).",
)
def compare(run_dirs: tuple[str, ...], out: Path, window: int) -> None:
    """Plot the returns of several runs in one figure: against env steps and wall time.

    Each RUN_DIR is a run folder (saves/<date>_<algo>_<env>); its episodes.jsonl is read
    (nothing in it is executed), the legend names each run by its folder, algo and env.
    """
    from soulsai.compare import compare as draw_compare

    curves = draw_compare([Path(d) for d in run_dirs], out, window)
    for c in curves:
        click.echo(f"{c.label}: {len(c.returns)} episodes, {int(c.env_steps[-1])} env steps")
    click.echo(f"wrote {out}")
