"""Every Redis key and channel name soulsai uses. Nothing else spells a key.

All names live under a configurable prefix (`key_prefix`) so several experiments can share
one Redis. docs/protocol.md documents each one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "soulsai"

    def _k(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    # experience: clients -> training node
    @property
    def samples(self) -> str:
        """List of experience envelopes; clients LPUSH, the training node pops from the right."""
        return self._k("samples")

    @property
    def episodes(self) -> str:
        """Stream of episode records (field `m`); the telemetry node reads it with a cursor."""
        return self._k("episodes")

    # model: training node -> clients
    @property
    def weights(self) -> str:
        """safetensors bytes of the current policy; model id and env steps in its metadata."""
        return self._k("weights")

    @property
    def model_id(self) -> str:
        """Integer id of the weights under `weights` (set in the same transaction)."""
        return self._k("model_id")

    @property
    def model_channel(self) -> str:
        """Pub/sub channel announcing each new model id (clients also poll `model_id`)."""
        return self._k("model")

    @property
    def config(self) -> str:
        """JSON of the effective config, published by the training node."""
        return self._k("config")

    @property
    def trainer_stats(self) -> str:
        """Hash of the training node's counters (env_steps, model_id, updates, accepted, ...)."""
        return self._k("trainer")

    @property
    def trainer_alive(self) -> str:
        """Present while a training node runs: each stats update renews its expiry, a clean
        stop deletes it (`soulsai quicksave` checks it before asking for a save)."""
        return self._k("trainer_alive")

    @property
    def telemetry_stats(self) -> str:
        """Hash of the telemetry node's counters (episodes, rolling_return, best, ...)."""
        return self._k("telemetry")

    @property
    def run(self) -> str:
        """Hash describing the current run (run_dir, algo, env, started)."""
        return self._k("run")

    # liveness and control
    def heartbeat(self, client_id: str) -> str:
        """Per-client key with an expiry the client keeps pushing forward."""
        return self._k(f"client:{client_id}")

    @property
    def heartbeat_pattern(self) -> str:
        return self._k("client:*")

    @property
    def client_seq(self) -> str:
        """Counter handing each client its index (for the epsilon ladder and seeds)."""
        return self._k("client_seq")

    @property
    def commands(self) -> str:
        """Pub/sub channel of JSON commands to clients ({"cmd": "shutdown"})."""
        return self._k("commands")

    @property
    def throttle(self) -> str:
        """Present (with a short expiry the training node keeps renewing) while the learner is
        behind its replay ratio: clients pause sampling. Changes are also announced on
        `commands` as {"cmd": "pause"} / {"cmd": "resume"}."""
        return self._k("throttle")

    def reply(self, token: str) -> str:
        """List holding the training node's one JSON answer to a command that carried
        `"reply": token` (`soulsai quicksave` waits on it); expires after a few minutes."""
        return self._k(f"reply:{token}")

    @property
    def trainer_commands(self) -> str:
        """List of JSON commands to the training node ({"cmd": "save_best", ...}); not lost
        while the node is busy or restarting."""
        return self._k("trainer_commands")
