"""The training side's algorithms: `algo` (the config key) -> the driver the node shell runs.

A fixed table, nothing imported by name: adding an algorithm adds its learner and driver
module and one entry here (the client side has its own table, `soulsai.client.actors.ACTORS`;
evaluation its own, `soulsai.training.policies`).
"""

from __future__ import annotations

from soulsai.training.algorithms.dqn_driver import DQNDriver
from soulsai.training.algorithms.ppo_driver import PPODriver
from soulsai.training.algorithms.r2d2_driver import R2D2Driver
from soulsai.training.driver import Driver

DRIVERS: dict[str, type[Driver]] = {"dqn": DQNDriver, "ppo": PPODriver, "r2d2": R2D2Driver}
