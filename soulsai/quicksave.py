"""`soulsai quicksave`: ask a running training node for a manual checkpoint, through Redis."""

from __future__ import annotations

import json
from pathlib import Path

from soulsai.config import Config
from soulsai.errors import ConnectionFailed
from soulsai.local import LOCAL_REDIS_FILE
from soulsai.transport import RedisTarget, TelemetryLink, open_link
from soulsai.transport.codec import encode_command


def local_target(cfg: Config) -> RedisTarget | None:
    """The embedded Redis of a `soulsai train` started from this directory, if one runs."""
    path = Path(cfg.save_dir) / LOCAL_REDIS_FILE
    try:
        info = json.loads(path.read_text())
        return RedisTarget(host=info["host"], port=int(info["port"]), password=info["password"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def request_quicksave(cfg: Config, config_dir: Path, buffer: bool) -> str:
    target = local_target(cfg) or RedisTarget.from_config(cfg, config_dir)
    link = open_link(TelemetryLink, target, cfg.key_prefix)
    run = link.run_info()
    if not run:
        raise ConnectionFailed(f"no training node has announced a run at {target.describe()}")
    link.send_trainer_command(encode_command("quicksave", buffer=buffer))
    return f"quicksave requested: the training node writes {run['run_dir']}/manual_save"
