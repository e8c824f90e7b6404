"""Scalar logs of a server node: TensorBoard event files and, when asked, Weights & Biases.

A node hands a dict of numbers and an env-step count; each sink writes the finite ones. Both
sinks are optional extras of the server side, never of a client: TensorBoard's event writer
(the `tensorboard` package's own, numpy and protobuf only, no torch or tensorflow) and `wandb`
(offline by default: no network, a run folder under <run>/wandb to `wandb sync` later). A sink
that fails while writing (a full disk, a W&B hiccup) is logged, rate limited, and never stops
the node: these logs watch a run, they are not part of it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from soulsai.errors import ConfigError
from soulsai.logs import RateLimitedLog

log = logging.getLogger(__name__)

TB_DIR = "tensorboard"  # <run>/tensorboard/<role>/events.out.tfevents.*: one TensorBoard run
# per node, so that two processes never write one directory (TensorBoard reads only the
# newest file of a directory as it grows)
WANDB_DIR = "wandb"  # wandb.init(dir=<run>) keeps its files in <run>/wandb
FLUSH_SECONDS = 10.0  # TensorBoard sees new points this often (and at close)
MAX_TAGS = 512  # distinct tags one log writes at most (names may come from env infos)
MAX_ABS = 1e30  # beyond float32's reach: not written


class Sink(Protocol):
    def write(self, values: Mapping[str, float], step: int, wall_time: float) -> None: ...

    def close(self) -> None: ...


class TensorBoardSink:
    """Scalars into one TensorBoard event file, as `simple_value` summaries (what torch's
    SummaryWriter writes), through the tensorboard package's asynchronous EventFileWriter."""

    def __init__(self, logdir: Path) -> None:
        try:
            from tensorboard.compat.proto import event_pb2, summary_pb2
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError as e:
            raise ConfigError(
                "tensorboard is not installed (pip install 'soulsai[server]'), or set "
                "training.tensorboard and telemetry.tensorboard to false"
            ) from e
        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        logdir.mkdir(parents=True, exist_ok=True)
        self.writer = EventFileWriter(str(logdir), flush_secs=FLUSH_SECONDS)
        self.logdir = logdir

    def write(self, values: Mapping[str, float], step: int, wall_time: float) -> None:
        summary = self._summary(
            value=[self._summary.Value(tag=k, simple_value=v) for k, v in values.items()]
        )
        self.writer.add_event(self._event(wall_time=wall_time, step=step, summary=summary))

    def close(self) -> None:
        self.writer.close()


@dataclass(frozen=True)
class WandbOptions:
    """What `wandb.init` gets from the config's `wandb` section (plain values: this module
    sits below the config package)."""

    project: str
    mode: str  # offline | online
    entity: str | None = None


class WandbSink:
    """One W&B run per node, grouped by run folder (job type training | telemetry); every
    value is logged against `env_steps`. Offline mode needs no network and no account."""

    def __init__(
        self, run_dir: Path, role: str, options: WandbOptions, config: Mapping[str, Any]
    ) -> None:
        try:
            import wandb
        except ImportError as e:
            raise ConfigError(
                "wandb.enabled is true but wandb is not installed: pip install 'soulsai[wandb]'"
            ) from e
        settings = wandb.Settings(
            console="off",  # leave this process's stdout and stderr (the node's log) alone
            silent=True,
            disable_git=True,
            save_code=False,
            x_disable_stats=True,
        )
        self.run = wandb.init(
            project=options.project,
            entity=options.entity,
            mode=options.mode,  # type: ignore[arg-type]
            dir=str(run_dir),
            group=run_dir.name,
            job_type=role,
            name=f"{run_dir.name}-{role}",
            config=dict(config),
            settings=settings,
            reinit="create_new",
        )
        self.run.define_metric("env_steps")
        self.run.define_metric("*", step_metric="env_steps")

    def write(self, values: Mapping[str, float], step: int, wall_time: float) -> None:
        self.run.log({**values, "env_steps": step})

    def close(self) -> None:
        self.run.finish()


class ScalarLog:
    """Fan-out to the sinks; keeps only finite, bounded numbers (bools and strings dropped)
    and at most MAX_TAGS distinct tags, each prefixed `<prefix>/`."""

    def __init__(self, sinks: list[Sink], prefix: str) -> None:
        self.sinks = sinks
        self.prefix = prefix
        self.tags: set[str] = set()
        self._log = RateLimitedLog(log)

    def __bool__(self) -> bool:
        return bool(self.sinks)

    def write(self, values: Mapping[str, Any], step: int, wall_time: float | None = None) -> None:
        if not self.sinks:
            return
        out: dict[str, float] = {}
        for key, v in values.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if not math.isfinite(v) or abs(v) > MAX_ABS:
                continue
            tag = f"{self.prefix}/{key}"
            if tag not in self.tags:
                if len(self.tags) >= MAX_TAGS:
                    continue
                self.tags.add(tag)
            out[tag] = float(v)
        if not out:
            return
        when = time.time() if wall_time is None else wall_time
        for sink in self.sinks:
            try:
                sink.write(out, int(step), when)
            except Exception as e:  # an optional log must never stop the node
                self._log.warning(
                    type(sink).__name__, f"{type(sink).__name__} failed to write: {e!r}"
                )

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as e:  # as in write: the node's own files matter more
                log.warning("%s failed to close: %r", type(sink).__name__, e)
        self.sinks = []


def open_scalars(
    run_dir: Path,
    role: str,
    *,
    tensorboard: bool,
    wandb: WandbOptions | None = None,
    config: Mapping[str, Any] | None = None,
    prefix: str | None = None,
) -> ScalarLog:
    """The scalar log of node `role` (training | telemetry) in `run_dir`: TensorBoard event
    files under <run>/tensorboard/<role>/ when `tensorboard`, a W&B run when `wandb` is given;
    tags are `<prefix>/<key>` (default: the role). A missing package is a ConfigError naming
    the key (exit 2), before the node starts."""
    sinks: list[Sink] = []
    if tensorboard:
        sinks.append(TensorBoardSink(run_dir / TB_DIR / role))
    if wandb is not None:
        sinks.append(WandbSink(run_dir, role, wandb, config or {}))
    return ScalarLog(sinks, prefix=prefix or role)
