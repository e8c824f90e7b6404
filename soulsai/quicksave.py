"""`soulsai quicksave`: ask a running training node for `manual_save/`, through Redis, and wait
until it says the save is on disk.

Which Redis: the embedded one of a `soulsai train` started from this directory (it leaves the
address and password in `<save_dir>/.soulsai-local.json`, readable only by its user), else the
configured one with `config/redis.secret`, as for any client.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

from soulsai.config import Config
from soulsai.errors import ConnectionFailed, SoulsaiError
from soulsai.local import LOCAL_REDIS_FILE
from soulsai.transport import RedisTarget, TelemetryLink, open_link
from soulsai.transport.commands import encode_command


class SaveFailed(SoulsaiError):
    """The training node answered that it could not write the save."""


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    if sys.platform == "win32":  # os.kill(pid, 0) would send CTRL_C there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else, or the OS cannot tell
        return True
    return True


def local_target(save_dir: Path | str) -> tuple[RedisTarget, str] | None:
    """(target, key prefix) of a `soulsai train` running from here with its own Redis."""
    path = Path(save_dir) / LOCAL_REDIS_FILE
    try:
        info = json.loads(path.read_text())
        if not _pid_alive(info.get("pid")):
            return None  # left behind by a run that was killed
        target = RedisTarget(host=info["host"], port=int(info["port"]), password=info["password"])
        return target, str(info["prefix"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def request_quicksave(
    cfg: Config, config_dir: Path, buffer: bool, timeout: float = 120.0, wait: bool = True
) -> str:
    """Send the quicksave command; with `wait`, return once the node reports it written."""
    found = local_target(cfg.save_dir)
    target, prefix = found or (RedisTarget.from_config(cfg, config_dir), cfg.key_prefix)
    link = open_link(TelemetryLink, target, prefix)
    try:
        run = link.run_info()
        if not run:
            raise ConnectionFailed(
                f"no training node has announced a run at {target.describe()} (prefix {prefix})"
            )
        if not link.trainer_alive():
            raise ConnectionFailed(f"the training node of {run.get('run_dir')} is not running")
        token = uuid.uuid4().hex
        command = encode_command("quicksave", buffer=buffer, reply=token)
        link.send_trainer_command(command)
        folder = f"{run.get('run_dir')}/manual_save"
        if not wait:
            return f"quicksave requested: the training node writes {folder}"
        raw = link.wait_reply(token, timeout)
        if raw is None:
            withdrawn = link.withdraw_trainer_command(command)
            alive = link.trainer_alive()
    finally:
        link.close()
    if raw is None:
        why = f"within {timeout:.0f} s" if alive else "before it stopped"
        fate = "request withdrawn" if withdrawn else "it took the request; check its log"
        raise ConnectionFailed(f"the training node did not confirm the save {why} ({fate})")
    answer = json.loads(raw)
    if not answer.get("ok"):
        raise SaveFailed(f"the training node could not save: {answer.get('reason')}")
    size = answer.get("bytes", 0) / 2**20
    buf = " with the replay buffer" if answer.get("buffer_saved") else ""
    return (
        f"saved {answer.get('folder')}{buf} ({size:.1f} MiB): env_steps={answer.get('env_steps')}"
        f" model_id={answer.get('model_id')} updates={answer.get('updates')}"
    )
