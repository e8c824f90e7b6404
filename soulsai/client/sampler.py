"""A sampling client: env -> policy -> experience out; weights in.

It needs only where Redis is and the secret; env, algorithm and batching settings come from
the config the training node publishes, except the keys that name code (env.imports,
env.wrappers), which come from this machine's own config only (soulsai/config/trust.py).
The env loop here is the same for every algorithm; what to act, record and send is the job
of the algorithm's actor (actors.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

import msgpack
import numpy as np

from soulsai.client.actor_base import Message
from soulsai.client.actors import make_actor
from soulsai.client.control import Control
from soulsai.client.envs import LocalVectorEnv, make_vector_env
from soulsai.client.outbox import Outbox
from soulsai.config import Config
from soulsai.config.trust import received_config
from soulsai.errors import ConnectionFailed, SoulsaiError
from soulsai.transport import ClientLink, RedisTarget, open_link
from soulsai.transport.compress import resolve as resolve_codec
from soulsai.transport.envelope import KIND_EPISODE, PROTOCOL_VERSION, encode_experience
from soulsai.transport.links import wait_for

log = logging.getLogger(__name__)

MAX_OUTBOX_MESSAGES = 2000
FRAME_FIELDS = frozenset({"frame"})  # fields sent compressed (training.frame_compression)


def make_client_id() -> str:
    host = socket.gethostname().split(".")[0][:32] or "client"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _info_scalars(final: Any) -> dict[str, float]:
    """Numeric scalars of an episode's last info dict (soulsgym puts e.g. boss HP there)."""
    if not isinstance(final, dict):
        return {}
    out = {}
    for k, x in final.items():
        if isinstance(x, (bool, int, float, np.number, np.bool_)) and np.isfinite(float(x)):
            out[str(k)[:64]] = float(x)
            if len(out) == 16:
                break
    return out


class EpisodeEncoder:
    """The envelope episodes.encode_episode writes, for one client at a few microseconds less per
    episode (short episodes come every few steps): no record object, one reused Packer."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self._packer = msgpack.Packer(use_bin_type=True)

    def encode(
        self, model_id: int, ret: float, length: int, info: dict[str, float], episode: int
    ) -> bytes:
        return self._packer.pack(
            {
                "v": PROTOCOL_VERSION,
                "t": KIND_EPISODE,
                "client": self.client_id,
                "model_id": int(model_id),
                "return": float(ret),
                "length": int(length),
                "time": time.time(),
                "info": info,
                "client_episode": int(episode),
            }
        )


class Sampler:
    def __init__(
        self,
        local_cfg: Config,
        target: RedisTarget,
        stop: threading.Event,
        client_id: str | None = None,
    ) -> None:
        self.client_id = client_id or make_client_id()
        self.stop = stop
        self.link = open_link(ClientLink, target, local_cfg.key_prefix, wait=local_cfg.connect_wait)
        raw = wait_for(self.link.fetch_config, local_cfg.client.config_wait)
        if raw is None:
            raise ConnectionFailed(
                "no training node published a config in "
                f"{local_cfg.client.config_wait:.0f}s (is it running?)"
            )
        # Data from Redis; the code-bearing keys (env.imports, env.wrappers) are this machine's.
        self.cfg = received_config(raw, local_cfg)
        self.index = self.link.register()
        self.rng = np.random.default_rng(self.cfg.seed + 1000 * (self.index + 1))
        self.env = make_vector_env(self.cfg.env)
        self.actor = make_actor(self.cfg, self.env, self.index, self.rng)
        self.codec = resolve_codec(self.cfg.training.frame_compression)  # for frame rows
        self.outbox = Outbox(
            self.link,
            MAX_OUTBOX_MESSAGES,
            self.cfg.telemetry.stream_maxlen,
            self.cfg.training.max_queue,
            eager=self.actor.eager,
            max_bytes=self.cfg.client.outbox_max_bytes,
        )
        self.steps = 0
        self.episodes = 0
        self.episode_encoder = EpisodeEncoder(self.client_id)
        self.control = Control(
            self.link,
            self.client_id,
            self.actor.expected,
            self.actor.make_policy,
            heartbeat_interval=self.cfg.client.heartbeat_interval,
            heartbeat_timeout=self.cfg.client.heartbeat_timeout,
            poll_interval=self.cfg.client.weights_poll_interval,
            max_bytes=self.cfg.training.max_weights_bytes,
            status=self._status,
            stop=stop,
            offline_grace=self.cfg.client.offline_grace,
        )
        if not wait_for(self.control.load_current, self.cfg.client.config_wait):
            raise ConnectionFailed(
                "no weights published in "
                f"{self.cfg.client.config_wait:.0f}s (is the training node up?)"
            )

    def _status(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "model_id": self.control.model_id,
            "steps": self.steps,
            "episodes": self.episodes,
            "dropped": self.outbox.dropped + self.outbox.trimmed,
            "dropped_episodes": self.outbox.dropped_episodes,
            "discarded": self.actor.discarded,
            "time": time.time(),
        }

    def run(self) -> None:
        """Sample until stopped (Ctrl-C, the server's shutdown command, or `stop`).

        Per step this loop does only what it must: act, step (the env writes into the actor's
        rows), tell the actor; everything per episode or per message happens off that path.
        """
        cfg = self.cfg
        n_envs = cfg.env.num_envs
        actor, env, stop, control = self.actor, self.env, self.stop, self.control
        may_sample = control.may_sample
        assert control.latest is not None  # __init__ waited for the first weights
        latest = control.latest
        model_id = latest[0]
        actor.set_model(*latest)
        control.start()
        log.info(
            "client %s (index %d) sampling %s with model %d (%s)",
            self.client_id,
            self.index,
            cfg.env.id,
            model_id,
            cfg.algo,
        )
        rows = actor.rows
        obs_rows = rows.obs_rows
        env.reset(rows, seed=cfg.seed + 7919 * self.index)
        env_failures = 0
        while not stop.is_set():
            if not may_sample.is_set():
                may_sample.wait(0.1)  # paused: the training node asked, or Redis is away
                continue
            if control.latest is not latest:
                latest = control.latest
                if latest is not None and latest[0] != model_id:
                    model_id = latest[0]
                    self._send(actor.set_model(*latest))
            actions = actor.act(obs_rows[rows.t], self.steps)
            try:
                ended = env.step(actions, rows)
            except SoulsaiError:  # a bad mask or an env outside its own space: no retry fixes it
                raise
            except Exception as e:  # a game crash must not end the run
                env_failures += 1
                env = self._recover_env(e, env_failures)
                continue
            env_failures = 0
            self.steps += n_envs
            if ended:
                for _, ret, length, info in ended:
                    self._episode(ret, length, model_id, _info_scalars(info))
            messages = actor.observe()
            if messages:
                self._send(messages)
                if actor.share_sent:
                    self._await_model(latest)
        self._send(actor.finish())

    def _await_model(self, latest: Any) -> None:
        """PPO: this client sent its share of the iteration; wait up to ppo.share_wait for the
        next model (checked every 2 ms) rather than sample rows that would arrive stale."""
        deadline = time.monotonic() + self.cfg.ppo.share_wait
        while self.control.latest is latest and time.monotonic() < deadline:
            if self.stop.wait(0.002):
                return
        if self.control.latest is latest:
            self.actor.share_waited()

    def _recover_env(self, error: Exception, failures: int) -> LocalVectorEnv:
        """Recreate a crashed env after a growing pause; give up after client.env_retries
        failures in a row (the episode in progress is dropped, its partial n-steps too)."""
        limit = self.cfg.client.env_retries
        self._send(self.actor.reset())
        while True:
            log.error(
                "env failed (%s: %s); recreating it (%d/%d)",
                type(error).__name__,
                str(error)[:200],
                failures,
                limit,
            )
            if failures > limit:
                raise error
            self.stop.wait(min(self.cfg.client.env_retry_backoff * 2 ** (failures - 1), 60.0))
            with contextlib.suppress(Exception):  # the crashed env may not close cleanly
                self.env.close()
            try:
                self.env = make_vector_env(self.cfg.env)
                self.env.reset(self.actor.rows)
                return self.env
            except Exception as e:  # the game may fail to come back at once
                error, failures = e, failures + 1

    def _send(self, messages: list[Message]) -> None:
        for model_id, fields in messages:
            self.outbox.put_samples(
                encode_experience(self.client_id, model_id, fields, self.codec, FRAME_FIELDS)
            )

    def _episode(self, ret: float, length: int, model_id: int, info: dict[str, float]) -> None:
        self.episodes += 1
        self.outbox.put_episode(
            self.episode_encoder.encode(model_id, ret, length, info, self.episodes)
        )

    def close(self) -> None:
        self.stop.set()
        self.control.join(2.0)
        self.outbox.close(timeout=5.0)
        try:
            self.env.close()
        finally:
            self.link.close()
