"""A training node's saves: periodic and final checkpoints, best_model/, manual_save/, restore.

Algorithm-agnostic: a node (DQN, PPO) implements `Checkpointable` and hands save commands to
`Saves.on_command`; the layout of what it returns is described in `soulsai.training.checkpoint`.

- `checkpoint/` is written every `checkpoint.every` updates and when the node stops; with
  `checkpoint.keep_last K` a copy of each also goes to `checkpoints/<time>_u<updates>/`, the
  newest K kept.
- `best_model/` on the telemetry node's `save_best` command (metric, value, episode, model id
  and the command's `measured_model_id` in its state.json); a value that does not beat the
  saved one, or a model id that best_model/ already holds (the same weights again), is skipped
  unless the command says `"force": true`, so a restarted telemetry node cannot overwrite a
  better model and a PPO run does not rewrite one model many times.
- `manual_save/` on `quicksave` (`soulsai quicksave [--buffer]`).
A command carrying `"reply": <token>` is answered with what was written (or why not).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from soulsai import run as runfolder
from soulsai.config import Config
from soulsai.errors import CheckpointError, ConfigError
from soulsai.training.checkpoint import (
    CONFIG,
    archive,
    counter,
    disk_usage,
    first_nonfinite,
    load_checkpoint,
    read_summary,
    save_checkpoint,
)

log = logging.getLogger(__name__)

HISTORY_DIR = "checkpoints"
FOLDERS = {
    "periodic": runfolder.CHECKPOINT_DIR,
    "final": runfolder.CHECKPOINT_DIR,
    "best": runfolder.BEST_DIR,
    "manual": runfolder.MANUAL_DIR,
}
REPLY_TOKEN = re.compile(r"[A-Za-z0-9_\-]{1,64}")


class Saveable(Protocol):
    """Anything whose state goes into a checkpoint (learners, buffers, normalizers)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Checkpointable(Protocol):
    """What a training node gives `Saves`: its state as checkpoint parts, and takes it back."""

    def checkpoint_state(self, with_buffer: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """(parts: policy, learner, [buffer], rng, node; counters for state.json).

        The counters hold at least env_steps, model_id, updates and episodes."""
        ...

    def restore_state(self, state: dict[str, Any], summary: dict[str, Any]) -> None: ...

    @property
    def model_id(self) -> int:
        """The newest published model id: the weights a save would write."""
        ...


@dataclass
class SaveResult:
    kind: str
    folder: Path
    ok: bool
    summary: dict[str, Any] = field(default_factory=dict)
    size: int = 0
    buffer_bytes: int = 0
    seconds: float = 0.0
    reason: str = ""  # why nothing was written (ok False)

    def answer(self) -> dict[str, Any]:
        """The JSON reply for a command that asked for one."""
        out: dict[str, Any] = {"ok": self.ok, "kind": self.kind, "folder": str(self.folder)}
        if self.ok:
            keys = ("env_steps", "model_id", "updates", "episodes", "buffer_saved", "value")
            out.update({k: self.summary[k] for k in keys if k in self.summary})
            out["bytes"] = self.size
        else:
            out["reason"] = self.reason
        return out


def _buffer_bytes(state: dict[str, Any]) -> int:
    buf = state.get("buffer")
    if not isinstance(buf, dict):
        return 0
    return sum(v.nbytes for v in buf.values() if isinstance(v, np.ndarray))


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


class Saves:
    def __init__(self, cfg: Config, run_dir: Path, node: Checkpointable) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.node = node
        self.config_json = cfg.model_dump_json(indent=2).encode()
        self.refused = 0  # saves refused because the state held NaN or inf

    def folder(self, kind: str) -> Path:
        return self.run_dir / FOLDERS[kind]

    def save(
        self,
        kind: str,
        with_buffer: bool | None = None,
        extra: dict[str, Any] | None = None,
    ) -> SaveResult:
        """Write the node's state into the folder for `kind`. A full disk or a permission
        problem is logged and reported, never raised: training goes on, and the previous
        checkpoint is still intact."""
        folder = self.folder(kind)
        if with_buffer is None:
            with_buffer = self.cfg.checkpoint.save_buffer
        t0 = time.monotonic()
        state, counters = self.node.checkpoint_state(with_buffer)
        bad = first_nonfinite(state)
        if bad is not None:  # a NaN model must never replace a good checkpoint
            self.refused += 1
            log.error("%s checkpoint NOT written to %s: %s holds NaN or inf", kind, folder, bad)
            return SaveResult(kind, folder, False, reason=f"non-finite values in {bad}")
        summary = {
            **counters,
            "kind": kind,
            "algo": self.cfg.algo,
            "env": self.cfg.env.id,
            "buffer_saved": "buffer" in state,
            "time": time.time(),
            **(extra or {}),
        }
        try:
            size = save_checkpoint(folder, state, summary, files={CONFIG: self.config_json})
            archived = None
            if kind in ("periodic", "final"):
                label = f"u{int(counters.get('updates', 0)):010d}"
                archived = archive(
                    folder, self.run_dir / HISTORY_DIR, self.cfg.checkpoint.keep_last, label
                )
        except OSError as e:
            log.error("%s checkpoint NOT written to %s: %s", kind, folder, e)
            return SaveResult(kind, folder, False, summary, reason=f"cannot write: {e}")
        result = SaveResult(
            kind, folder, True, summary, size, _buffer_bytes(state), time.monotonic() - t0
        )
        self._log(result, archived is not None)
        return result

    def _log(self, r: SaveResult, history: bool) -> None:
        parts = [
            f"{r.kind} checkpoint written to {r.folder}: {_mib(r.size)}",
            f"env_steps={r.summary.get('env_steps')} model_id={r.summary.get('model_id')}"
            f" updates={r.summary.get('updates')}",
        ]
        if r.buffer_bytes:
            parts.append(f"replay buffer {_mib(r.buffer_bytes)}")
        if history:
            hist = self.run_dir / HISTORY_DIR
            kept = sum(1 for d in hist.iterdir() if d.is_dir() and not d.name.startswith("."))
            parts.append(
                f"history {kept} in {HISTORY_DIR}/, all checkpoints "
                f"{_mib(disk_usage(self.folder('periodic'), hist))} on disk"
            )
        log.info("%s (%.2f s)", "; ".join(parts), r.seconds)

    # ---------------------------------------------------------------- commands

    def on_command(self, cmd: dict[str, Any]) -> dict[str, Any] | None:
        """Handle `save_best` or `quicksave`; returns the answer to send (None if not asked)."""
        if cmd["cmd"] == "quicksave":
            result = self.save("manual", with_buffer=bool(cmd.get("buffer", False)))
        elif cmd["cmd"] == "save_best":
            result = self._save_best(cmd)
        else:
            raise ValueError(f"not a save command: {cmd['cmd']!r}")
        token = cmd.get("reply")
        if isinstance(token, str) and REPLY_TOKEN.fullmatch(token):
            return result.answer()
        return None

    def _save_best(self, cmd: dict[str, Any]) -> SaveResult:
        value = cmd.get("value")
        value = float(value) if isinstance(value, (int, float)) and np.isfinite(value) else None
        episode = cmd.get("episode")
        extra = {
            "metric": str(cmd.get("key", "return"))[:64],
            "value": value,
            "episode": episode if isinstance(episode, int) else None,
        }
        measured = cmd.get("model_id")  # the model the telemetry node saw reach `value`
        measured = measured if type(measured) is int and 0 <= measured < 2**63 else None
        current = self.node.model_id
        log.info(
            "save_best: %s %s at episode %s, measured on model %s; this node's model is %s",
            extra["metric"], value, extra["episode"], measured, current,
        )  # fmt: skip
        extra["measured_model_id"] = measured
        old = read_summary(self.folder("best")) or {}
        if not cmd.get("force") and old.get("model_id") == current:
            reason = f"best_model/ already holds model {current} (the command named {measured})"
            log.info("best model not rewritten: %s", reason)
            return SaveResult("best", self.folder("best"), False, reason=reason)
        old_value = old.get("value")
        if (
            not cmd.get("force")
            and value is not None
            and isinstance(old_value, (int, float))
            and value <= old_value
        ):
            reason = f"{extra['metric']} {value:g} does not beat the saved best {old_value:g}"
            log.info("best model not replaced: %s", reason)
            return SaveResult("best", self.folder("best"), False, reason=reason)
        return self.save("best", with_buffer=False, extra=extra)

    # ---------------------------------------------------------------- restore

    def restore(self, folder: Path) -> dict[str, Any]:
        """Load `folder` into the node; the env and algorithm must match the config.

        Episodes recorded after the checkpoint (before a crash) keep their place: env steps
        continue from the last one recorded, model ids after the highest one seen, so the
        curve never steps back and no id names two different models.
        """
        state, summary = load_checkpoint(folder)
        saved = (summary.get("algo"), summary.get("env"))
        if saved != (self.cfg.algo, self.cfg.env.id):
            raise ConfigError(
                f"checkpoint {folder} was trained with algo={saved[0]} env={saved[1]}; "
                f"the config asks for algo={self.cfg.algo} env={self.cfg.env.id}"
            )
        node_counters = state.get("node") or summary
        if not isinstance(node_counters, dict):
            raise CheckpointError(f"checkpoint {folder}: its counters are not a map")
        counters = dict(node_counters)
        for key in ("env_steps", "model_id", "accepted"):
            counters[key] = counter(counters, key, folder)
        counters["episodes"] = counter(counters, "episodes", folder, default=0)
        steps, model = recorded_progress(self.run_dir)
        if steps > counters["env_steps"] or model > counters["model_id"]:
            log.info(
                "episodes recorded after the checkpoint reach env_steps=%d, model_id=%d: "
                "counting on from there (the experience since the checkpoint is lost)",
                steps,
                model,
            )
            counters["env_steps"] = max(counters["env_steps"], steps)
            counters["model_id"] = max(counters["model_id"], model)
        state["node"] = counters
        try:
            self.node.restore_state(state, summary)
        except (KeyError, ValueError, RuntimeError, TypeError, AttributeError, IndexError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"checkpoint {folder} does not fit this configuration: {first[:300]}"
            ) from None
        return summary


def recorded_progress(run_dir: Path) -> tuple[int, int]:
    """(highest env_steps, highest model_id) in the run's episodes.jsonl; (0, 0) without one."""
    steps = model = 0
    try:
        with open(Path(run_dir) / runfolder.EPISODES_FILE, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    steps = max(steps, int(rec.get("env_steps") or 0))
                    model = max(model, int(rec.get("model_id") or 0))
                except (ValueError, TypeError, AttributeError):
                    continue  # a torn last line
    except OSError:
        pass
    return steps, model


def describe(summary: dict[str, Any]) -> str:
    """One line for logs: the counters of a checkpoint."""
    keys = ("env_steps", "model_id", "updates", "episodes")
    return " ".join(f"{k}={summary.get(k)}" for k in keys) + (
        " (with replay buffer)" if summary.get("buffer_saved") else ""
    )


def answer_json(answer: dict[str, Any]) -> bytes:
    return json.dumps(answer).encode()
