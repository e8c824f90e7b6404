"""What every sampling client's actor is: the Actor protocol and the Message it ships.

The env loop (sampler.py) is the same for every algorithm: the env writes each vector-env
step into the actor's `rows` (envs.StepRows), the actor is told with `observe()`, and the loop
ships whatever messages it returns. An actor holds the policy of exactly one model id at a
time and never mixes model ids in a message. The actors themselves live one per algorithm
(dqn_actor.py, ppo_actor.py); actors.py holds the table that picks one.
"""

from __future__ import annotations

from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from soulsai.client.envs import StepRows

Message = tuple[int, dict[str, np.ndarray]]  # (model id, per-transition fields)
NO_MESSAGES: list[Message] = []  # what most steps return; never appended to


class Actor(Protocol):
    expected: dict[str, tuple[int, ...]]  # weight names and shapes a valid model must have
    discarded: int  # env steps recorded but never sent (partial fragments of an old model)
    rows: StepRows  # the env writes each step here; row `rows.t` is the step in progress
    share_sent: bool  # PPO: this client has sent its share of the current model's iteration
    eager: bool  # send each message at once (a whole PPO fragment), not in timed batches

    def make_policy(self, state: dict[str, Any]) -> Any: ...

    def set_model(self, model_id: int, policy: Any, meta: dict[str, Any]) -> list[Message]: ...

    def act(self, obs: np.ndarray, client_steps: int) -> np.ndarray: ...

    def observe(self) -> list[Message]:
        """Row `rows.t` is complete: take it in, return what is ready to send."""
        ...

    def reset(self) -> list[Message]:
        """Before the env restarts all episodes: send what is complete, drop the rest and
        start `rows` empty (the env then writes the first observations to `rows.obs[0]`)."""
        ...

    def finish(self) -> list[Message]: ...

    def share_waited(self) -> None:
        """The wait for the next model after `share_sent` timed out: sample on."""
        ...


class VectorSpaces(Protocol):
    single_observation_space: gym.Space
    single_action_space: gym.Space
