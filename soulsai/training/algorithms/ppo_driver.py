"""PPO inside the node shell: synchronous iterations that survive clients joining and leaving.

Iteration k: publish model k; every connected client samples with exactly model k and sends
whole rollout fragments tagged k; once the node holds `ppo.n_steps_total` transitions of model
k, from whichever clients delivered them, it trains and publishes model k+1. Samples of any
other model id are rejected and counted (`stale_model`, `future_model`), and so are samples of
model k that arrive after its batch was closed. Clients sample continuously, so one that dies
only slows the others' iteration down; if no sample of model k arrived for
`ppo.client_timeout` seconds (every client gone), the node trains on what it has when that is
at least `ppo.min_fraction` of the target, and otherwise waits and logs why.

While the node trains, clients are paused (`ppo.pause_clients`): what they sampled with model
k after its batch closed would be rejected anyway.

Observations arrive leaf by leaf (the layout of `env.obs_keys` and `env.drop_constant_obs`);
with `env.action_mask` set each row carries the packed mask it was sampled under, checked here
(`bad_mask`: padding bits set or no valid action; the whole message is rejected) and used by
the loss. With `ppo.recurrent` each message must be whole fragments of `ppo.fragment_length`
rows carrying their initial recurrent states (`state`); the node reassembles them
(`bad_structure`, `out_of_range` otherwise: the whole message is rejected) and the learner
unrolls the core over each fragment from its state.
"""

from __future__ import annotations

import math
import time
from typing import Any

import gymnasium as gym
import numpy as np

from soulsai.config.schema import check_ppo_config
from soulsai.errors import ProtocolError
from soulsai.logs import RateLimitedLog
from soulsai.model.cores import gather_state
from soulsai.model.masks import check_mask_bits
from soulsai.model.specs import ppo_experience_spec
from soulsai.training.algorithms.ppo import PPOLearner
from soulsai.training.driver import Host, IntakeHooks
from soulsai.training.rollout import RolloutBuffer
from soulsai.transport.envelope import Experience
from soulsai.transport.links import TRANSIENT

PAUSE_TTL = 30.0  # seconds a pause outlives a training node that died mid-update
STATS = ("loss", "approx_kl", "clipfrac", "entropy", "explained_variance", "lr")


class PPODriver:
    metrics = {
        "accepted": "transitions accepted into iterations",
        "iterations": "PPO iterations trained",
        "collected": "transitions of the current model collected so far",
        "iteration_seconds": "wall time of the last iteration (publish to publish)",
        "loss": "total loss of the last minibatch",
        "approx_kl": "approximate KL divergence of the last minibatch",
        "clipfrac": "fraction of clipped ratios in the last iteration",
        "entropy": "policy entropy of the last minibatch",
        "explained_variance": "explained variance of the value function (last iteration)",
        "lr": "learning rate of the last iteration",
        "nonfinite_updates": "minibatch steps and statistics merges skipped: NaN or inf",
    }
    rates: tuple[str, ...] = ("samples",)

    def __init__(self, host: Host, obs_space: gym.Space, act_space: gym.Space) -> None:
        cfg = self.cfg = host.cfg
        check_ppo_config(cfg)
        p = cfg.ppo
        self.host = host
        self.learner = PPOLearner(p, obs_space, act_space, cfg.seed, cfg.training.device, cfg.env)
        self.masked = cfg.env.action_mask is not None
        self.n_actions = int(act_space.n) if isinstance(act_space, gym.spaces.Discrete) else 0
        self.spec = ppo_experience_spec(
            obs_space,
            act_space,
            cfg.training.max_batch,
            cfg.training.max_message_bytes,
            max_abs_obs=cfg.training.max_abs_obs,
            max_abs_reward=cfg.training.max_abs_reward,
            gamma=p.gamma,
            layout=self.learner.layout,
            masked=self.masked,
            state_size=self.learner.net.state_size,
            fragment_length=p.fragment_length,
        )
        self.rollout = RolloutBuffer(p.gamma, p.gae_lambda, self.learner.layout)  # host's lock
        self.collecting = True  # False while model k's batch is closed and trains
        self.iteration_started = self.last_sample = time.monotonic()
        self.last_info: dict[str, float] = {}
        self.paused = False
        self.waiting = ""  # why the node is not training yet although clients seem gone
        self._log = RateLimitedLog(host.log, cfg.training.log_interval)
        self.hooks = IntakeHooks(max_delay=0, accept=self.accept)  # only model k is on-policy
        self.progress = (
            f"env_steps={{env_steps}} iteration={{iterations}} model={{model_id}} "
            f"collected={{collected}}/{p.n_steps_total} clients={{clients}} "
            "samples/s={samples_per_s} approx_kl={approx_kl} clipfrac={clipfrac} "
            "entropy={entropy} explained_var={explained_variance} rejected={rejected}"
        )

    # ---------------------------------------------------------------- intake side

    def accept(self, exp: Experience) -> None:
        host = self.host
        fields = exp.fields
        try:
            if self.masked:  # stored unpacked: the loss reads the bool mask (B, n_actions)
                mask = check_mask_bits(fields["mask"], self.n_actions)
                action = fields["action"]  # in range: the spec checked it
                if not mask[np.arange(len(action)), action].all():
                    raise ProtocolError("bad_mask", "an action outside the mask it was drawn under")
                fields = {**fields, "mask": mask}
            if self.learner.net.state_size:  # the fragments' initial states (n_fragments, S)
                states = gather_state(
                    fields["state"],
                    fields["last"],
                    self.learner.net.state_size,
                    self.cfg.ppo.fragment_length,
                )
                fields = {k: v for k, v in fields.items() if k != "state"}
                fields["initial_state"] = states
        except ProtocolError as e:
            with host.lock:
                host.intake.rejected[e.reason] += 1
            self._log.warning(e.reason, f"rejected experience message: {e}")
            return
        with host.lock:
            if not self.collecting or exp.model_id != host.model_id:
                # model k's batch closed (or k+1 published) between the check and now
                host.intake.rejected["stale_model"] += exp.n
                return
            self.rollout.add(fields)
            host.accepted += exp.n
            self.last_sample = time.monotonic()
        host.data_ready.set()

    # ---------------------------------------------------------------- learner side

    def step(self) -> None:
        if self._ready():
            self._iterate()
        else:
            self.host.data_ready.wait(0.05)
            self.host.data_ready.clear()

    def _ready(self) -> bool:
        """True when the current iteration should train now (see the module docstring)."""
        p, host = self.cfg.ppo, self.host
        with host.lock:
            have, last = len(self.rollout), self.last_sample
        self.waiting = ""
        if have >= p.n_steps_total:
            return True
        silent = time.monotonic() - last
        if silent < p.client_timeout:
            return False
        need = max(1, math.ceil(p.min_fraction * p.n_steps_total))
        if have >= need:
            host.log.warning(
                "model %d: training on %d of %d transitions: none arrived for %.0f s "
                "(ppo.client_timeout); %d client(s) connected",
                host.model_id,
                have,
                p.n_steps_total,
                silent,
                host.clients,
            )
            return True
        self.waiting = (
            f"model {host.model_id}: {have}/{p.n_steps_total} transitions, none for "
            f"{silent:.0f} s, {host.clients} client(s) connected; training needs at least "
            f"{need} (ppo.min_fraction={p.min_fraction})"
        )
        self._log.warning("waiting", f"waiting for samples: {self.waiting}")
        return False

    def _iterate(self) -> None:
        """Close model k's batch, train on it, publish model k+1."""
        host = self.host
        self._pause_clients(True)
        closed = time.monotonic()
        collect_s = closed - self.iteration_started
        with host.lock:
            self.collecting = False
            parts = self.rollout.take()
        obs = self.rollout.observations(parts)
        scale = self.learner.reward_scale(np.concatenate([f["disc_return"] for f in parts]))
        batch = self.rollout.compute_returns_and_advantage(parts, scale)
        info = self.learner.update(batch, self._lr_frac())
        self.learner.update_normalizer(obs)  # after the update: it trained with model k's stats
        now = time.monotonic()
        n = len(batch.values)
        info.update(
            transitions=n,
            reward_scale=scale,
            iteration_seconds=now - self.iteration_started,
        )
        self.last_info = info
        state = host.finite_policy()
        with host.lock:
            host.model_id += state is not None  # else model k stays, its clients sample on
            self.collecting = True
            self.iteration_started = self.last_sample = now
        if state is not None:
            host.publish(state)
        self._pause_clients(False)
        host.log.debug(
            "iteration %d: collected %d transitions in %.3f s, trained in %.3f s, published in "
            "%.3f s",
            self.learner.iterations,
            n,
            collect_s,
            now - closed,
            time.monotonic() - now,
        )
        host.learned()

    def _lr_frac(self) -> float:
        """Linear annealing to 0 over max_steps env steps (when enabled and max_steps > 0)."""
        if not (self.cfg.ppo.anneal_lr and self.cfg.max_steps):
            return 1.0
        return max(0.0, 1.0 - self.host.env_steps / self.cfg.max_steps)

    def _pause_clients(self, on: bool) -> None:
        if not self.cfg.ppo.pause_clients or on == self.paused:
            return
        try:
            self.host.link.set_throttle(on, ttl=PAUSE_TTL)
        except TRANSIENT as e:
            what = "pause" if on else "resume"
            self.host.log.warning("cannot %s clients (%s)", what, type(e).__name__)
            return
        self.paused = on

    def release(self) -> None:
        self._pause_clients(False)

    # ---------------------------------------------------------------- stats and logs

    def stats(self) -> dict[str, Any]:
        with self.host.lock:
            collected = len(self.rollout)
        info = self.last_info
        return {
            "iterations": self.learner.iterations,
            "collected": collected,
            "buffer": collected,
            "throttled": int(self.paused),
            "waiting": self.waiting,
            **{
                k: round(float(info.get(k, float("nan"))), 6) for k in (*STATS, "iteration_seconds")
            },
        }

    def note(self, event: str) -> str:
        if event == "up":
            return f", {self.cfg.ppo.n_steps_total} transitions per iteration"
        if event == "stopped":
            return (
                f" ({self.host.accepted} accepted), {self.learner.iterations} iterations, "
                f"{self.learner.updates} updates; rejected {dict(self.host.intake.rejected)}"
            )
        return ""

    def weights_meta(self) -> dict[str, Any]:
        return {"iterations": self.learner.iterations}

    # ---------------------------------------------------------------- checkpoints

    def checkpoint(self, with_buffer: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """PPO keeps no replay buffer: the transitions of the iteration in progress belong to a
        model that a resumed node never publishes again, so `with_buffer` changes nothing."""
        return {}, {"iterations": self.learner.iterations}

    def restore(self, state: dict[str, Any], counters: dict[str, Any]) -> None:
        pass  # the learner (net, normalizer, optimizer, return statistics) is all there is
