"""The contract between the training-node shell (`soulsai.training.node`) and an algorithm.

The shell owns everything a node does whatever it learns: the link, the intake thread, the
counters (`model_id`, `accepted`, env steps), stats, /metrics, commands, publishing, saves
and shutdown. A `Driver` owns the rest: how accepted samples are kept, one learning step,
its own stats and log line, and its parts of a checkpoint. A driver gets the shell as a
`Host` and publishes through it; drivers never see each other.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from soulsai.config import Config
from soulsai.training.intake import Intake
from soulsai.training.shares import ClientShares
from soulsai.transport import TrainerLink
from soulsai.transport.envelope import Experience, ExperienceSpec


class Learner(Protocol):
    """What the shell reads of a learner: its counters, policy and state."""

    @property
    def updates(self) -> int: ...

    @property
    def nonfinite_updates(self) -> int: ...

    def policy_state(self) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class IntakeHooks:
    """How the intake hands over good samples: per envelope (`accept`) or one call per popped
    batch (`accept_rows(fields, clients)`: one array per field, and one int64 per row naming
    the client that sent it, the same number for the same client id in every node process);
    `max_delay` model ids of staleness are accepted; `shares` caps each client's part of the
    update debt."""

    max_delay: int
    accept: Callable[[Experience], None] | None = None
    accept_rows: Callable[[dict[str, np.ndarray], np.ndarray], None] | None = None
    shares: ClientShares | None = None


class Host(Protocol):
    """What a driver may use of the shell."""

    cfg: Config
    link: TrainerLink
    intake: Intake
    stop: threading.Event
    lock: threading.RLock  # guards the driver's buffers and the shell's counters
    data_ready: threading.Event  # set by the intake when samples were accepted
    model_id: int
    accepted: int
    clients: int
    log: logging.Logger  # the node's logger: every line of a node comes from one name

    @property
    def env_steps(self) -> int: ...

    def finite_policy(self) -> dict[str, Any] | None: ...

    def publish(self, state: dict[str, Any] | None = None) -> None: ...

    def learned(self) -> None: ...


class Driver(Protocol):
    """One algorithm inside the shell, built from the host and one env copy's spaces."""

    metrics: dict[str, str]  # its gauges on /metrics, besides the shell's
    rates: tuple[str, ...]  # per-second rates in its stats: "samples", "updates"
    progress: str  # the periodic log line: str.format fields name keys of the node's stats

    def __init__(self, host: Host, obs_space: gym.Space, act_space: gym.Space) -> None: ...

    @property
    def spec(self) -> ExperienceSpec: ...

    @property
    def learner(self) -> Learner: ...

    @property
    def hooks(self) -> IntakeHooks: ...

    def step(self) -> None:
        """One learning step (and publish when a new model is due), or a short wait for data."""

    def stats(self) -> dict[str, Any]:
        """Its counters for the stats hash and /metrics (the shell adds the common ones)."""
        ...

    def note(self, event: str) -> str:
        """What the log line of `event` adds to the common part: "up" (after the env id),
        "stopped" (after the env steps), "resumed" (before the next model id)."""
        ...

    def weights_meta(self) -> dict[str, Any]:
        """Counters sent with the weights besides env_steps, num_clients and updates."""
        ...

    def release(self) -> None:
        """Let paused clients sample again: the node stops."""

    def checkpoint(self, with_buffer: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """Its checkpoint parts besides policy, learner and node (`rng` extras under "rng"),
        and its counters for state.json; called under the host's lock."""
        ...

    def restore(self, state: dict[str, Any], counters: dict[str, Any]) -> None:
        """Take back its parts after the shell restored the learner, RNGs and counters."""
