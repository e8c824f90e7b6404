"""The training node's link: experience in; weights, config and stats out; commands."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from soulsai.errors import ConfigError
from soulsai.transport.commands import encode_command
from soulsai.transport.keys import Keys
from soulsai.transport.links import Link
from soulsai.transport.resp import Parts, PartsPacker


class TrainerLink(Link):
    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        super().__init__(r, keys)
        self._blob_r: redis.Redis | None = None

    def _blob_client(self) -> redis.Redis:
        """A second connection to the same server, made for multi-megabyte values.

        With hiredis installed, redis-py packs every command with hiredis, which copies a 4 MB
        argument slowly (5 to 20 ms on the development machine, against 0.3 ms for a plain
        copy). redis-py's own packer hands a large argument to the socket as it is.
        """
        if self._blob_r is None:
            pool = self.r.connection_pool
            packer = PartsPacker(6000, pool.get_encoder().encode)
            self._blob_r = redis.Redis(
                connection_pool=redis.ConnectionPool(
                    connection_class=pool.connection_class,
                    **{**pool.connection_kwargs, "command_packer": packer},
                )
            )
        return self._blob_r

    def close(self) -> None:
        if self._blob_r is not None:
            self._blob_r.close()
        super().close()

    def pop_samples(self, count: int, block: float) -> tuple[list[bytes], int]:
        """Up to `count` envelopes, oldest first, and how many stay queued after them (read in
        the same round trip); blocks up to `block` seconds when the queue is empty."""
        pipe = self.r.pipeline(transaction=False)
        pipe.rpop(self.keys.samples, count)
        pipe.llen(self.keys.samples)
        got, left = pipe.execute()
        if got:
            return list(got), int(left)
        if block <= 0:
            return [], 0
        item = self.r.brpop([self.keys.samples], timeout=block)
        return ([item[1]] if item else []), 0

    def queued_samples(self) -> int:
        return int(self.r.llen(self.keys.samples))

    def publish_weights(self, blob: bytes | Sequence[memoryview], model_id: int) -> None:
        """Weights, their model id and the notice to clients, in one transaction (one round
        trip). The blob, whole or in parts (`encode_weights_parts`), goes to the socket as it
        is: no copy is made of it on the way."""
        value = blob if isinstance(blob, (bytes, bytearray, memoryview)) else Parts(blob)
        pipe = self._blob_client().pipeline(transaction=True)
        pipe.set(self.keys.weights, value)  # type: ignore[arg-type]  # Parts: our packer
        pipe.set(self.keys.model_id, model_id)
        pipe.publish(self.keys.model_channel, str(model_id))
        try:
            pipe.execute()
        except redis.ResponseError as e:
            if "bulk length" not in str(e):
                raise
            parts = value if isinstance(value, Parts) else (value,)
            size = sum(memoryview(p).nbytes for p in parts)
            raise ConfigError(
                f"the weights ({size} bytes) are longer than Redis takes (its proto-max-bulk-len):"
                " raise it and training.max_weights_bytes (docs/deployment.md)"
            ) from None

    def publish_config(self, config_json: str, run_info: dict[str, str]) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.set(self.keys.config, config_json)
        pipe.delete(self.keys.run)
        pipe.hset(self.keys.run, mapping=run_info)
        pipe.execute()

    def set_stats(self, stats: dict[str, Any], alive_ttl: float = 10.0) -> bool:
        """Publish the counters and renew the liveness key (`trainer_alive`).

        Returns False when the published config or weights are gone (Redis restarted without
        persistence, or someone deleted them): the node must publish them again.
        """
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(self.keys.trainer_stats, mapping={k: str(v) for k, v in stats.items()})
        pipe.set(self.keys.trainer_alive, 1, px=int(alive_ttl * 1000))
        pipe.exists(self.keys.config, self.keys.weights)
        return int(pipe.execute()[-1]) == 2

    def clear_alive(self) -> None:
        """A clean stop: the training node is gone now, not only after the expiry."""
        self.r.delete(self.keys.trainer_alive)

    def pop_commands(self, count: int = 16) -> list[bytes]:
        return list(self.r.rpop(self.keys.trainer_commands, count) or [])

    def reply(self, token: str, answer: bytes, ttl: float = 300.0) -> None:
        """Answer a command that asked for it; kept `ttl` seconds for a late reader."""
        pipe = self.r.pipeline(transaction=True)
        pipe.lpush(self.keys.reply(token), answer)
        pipe.pexpire(self.keys.reply(token), int(ttl * 1000))
        pipe.execute()

    def set_throttle(self, on: bool, ttl: float = 3.0) -> None:
        """Pause (or resume) the clients: a key with an expiry plus a notification."""
        pipe = self.r.pipeline(transaction=False)
        if on:
            pipe.set(self.keys.throttle, 1, px=int(ttl * 1000))
        else:
            pipe.delete(self.keys.throttle)
        pipe.publish(self.keys.commands, encode_command("pause" if on else "resume"))
        pipe.execute()
