"""Peer for bench/solve.py and bench/scaling.py: Stable-Baselines3 with RL-Zoo's tuned
hyperparameters, stopped by the same rule as `soulsai train` (mean of the last 20 training
episode returns >= target). Prints one JSON line. Bench-only: `pip install -e .[bench]`.

    python bench/sb3_run.py --algo ppo --env CartPole-v1 --target 475 --seed 1
    python bench/sb3_run.py --algo qrdqn --env LunarLander-v3 --target 200 --seed 1
    python bench/sb3_run.py --algo ppo_lstm --env CartPoleNoVel-v1 --target 475 --seed 1

`qrdqn` is sb3-contrib's QR-DQN (in the bench extra), the peer of soulsai's dqn.n_quantiles;
`ppo_lstm` sb3-contrib's RecurrentPPO, the peer of soulsai's ppo.recurrent, on soulsai's
registration of RL-Zoo's CartPoleNoVel-v1 (soulsai.envs.memory).

`dqn` on `MinAtar-Breakout-v0` (issue 18's CNN check) plays soulsai's MinAtar adapter
(soulsai/MinAtar-Breakout-v0, minatar in the bench extra) with soulsai's own torch CNN module
as SB3's features extractor (`SoulsaiCNN`: literally the network `env.image_encoder: minatar`
builds, fed the same channels-first [0, 1] frames) and the MinAtar paper's DQN (Young & Tian
2019; RL-Zoo has no MinAtar entry) as soulsai's preset scales it to a 500k budget
(config/presets/dqn/soulsai/MinAtar-Breakout-v0.yaml): Adam 2.5e-4 with soulsai's eps 1.5e-4,
batch 32, 100k replay, 5k steps before learning, one update per step, a target copy every 1,000
steps, epsilon 1 -> 0.1 over 10k steps, gradient norm 10, Huber loss, one-step targets, not
double DQN (SB3's DQN has none), a hidden layer of 128. What does not map: SB3 runs one env
where soulsai runs 2 clients. `--hp n_steps=3` gives it the preset's own 3-step returns (SB3's
n_steps), the one setting in which the preset departs from the paper's DQN as both sides run
it (Adam stands in for the paper's RMSProp on both): like for like.

    python bench/sb3_run.py --algo dqn --env MinAtar-Breakout-v0 --target 3 --seed 1
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections import deque
from pathlib import Path

T0 = time.time()

import gymnasium as gym  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from stable_baselines3 import DQN, PPO  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from soulsai.envs.make import StepDelay  # noqa: E402
from soulsai.model.cnn import make_cnn  # noqa: E402
from soulsai.model.cnn_spec import ImageOptions, cnn_features  # noqa: E402


class SoulsaiCNN(BaseFeaturesExtractor):
    """soulsai's torch CNN (`soulsai.model.cnn.make_cnn`, as `env.image_encoder` builds it) as
    SB3's features extractor. SB3 hands it channels-first frames already scaled to [0, 1]
    (VecTransposeImage, normalize_images): what soulsai's `to_nchw` feeds the same module."""

    def __init__(self, observation_space: gym.spaces.Box, encoder: str = "minatar") -> None:
        c, h, w = observation_space.shape
        options = ImageOptions(encoder)  # type: ignore[arg-type]
        super().__init__(observation_space, cnn_features(options, c, h, w))
        self.cnn = make_cnn(options, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cnn(x)


def linear(start: float):
    """RL-Zoo's lin_<start>; rescaled in main() to decay over the zoo's budget."""
    return ("linear", start)


# RL-Zoo (rl-baselines3-zoo) hyperparameters for these envs (LunarLander's are the v2 entries).
ZOO = {
    ("dqn", "CartPole-v1"): dict(
        n_envs=1,
        learning_rate=2.3e-3,
        batch_size=64,
        buffer_size=100_000,
        learning_starts=1000,
        gamma=0.99,
        target_update_interval=10,
        train_freq=256,
        gradient_steps=128,
        exploration_fraction=0.16,
        exploration_final_eps=0.04,
        net=[256, 256],
        budget=50_000,
    ),
    ("ppo", "CartPole-v1"): dict(
        n_envs=8,
        n_steps=32,
        batch_size=256,
        gae_lambda=0.8,
        gamma=0.98,
        n_epochs=20,
        ent_coef=0.0,
        learning_rate=linear(1e-3),
        clip_range=linear(0.2),
        budget=100_000,
    ),
    ("dqn", "LunarLander-v3"): dict(
        n_envs=1,
        learning_rate=6.3e-4,
        batch_size=128,
        buffer_size=50_000,
        learning_starts=0,
        gamma=0.99,
        target_update_interval=250,
        train_freq=4,
        gradient_steps=-1,
        exploration_fraction=0.12,
        exploration_final_eps=0.1,
        net=[256, 256],
        budget=100_000,
    ),
    # rl-baselines3-zoo hyperparams/ppo_lstm.yml: RecurrentPPO, VecNormalize(norm_obs only)
    ("ppo_lstm", "CartPoleNoVel-v1"): dict(
        n_envs=8,
        n_steps=32,
        batch_size=256,
        gae_lambda=0.8,
        gamma=0.98,
        n_epochs=20,
        ent_coef=0.0,
        learning_rate=linear(1e-3),
        clip_range=linear(0.2),
        normalize=True,
        policy_kwargs=dict(
            ortho_init=False,
            activation_fn=nn.ReLU,
            lstm_hidden_size=64,
            enable_critic_lstm=True,
            net_arch=dict(pi=[64], vf=[64]),
        ),
        budget=100_000,
    ),
    # sb3-contrib's QR-DQN: rl-baselines3-zoo hyperparams/qrdqn.yml
    ("qrdqn", "CartPole-v1"): dict(
        n_envs=1,
        learning_rate=2.3e-3,
        batch_size=64,
        buffer_size=100_000,
        learning_starts=1000,
        gamma=0.99,
        target_update_interval=10,
        train_freq=256,
        gradient_steps=128,
        exploration_fraction=0.16,
        exploration_final_eps=0.04,
        net=[256, 256],
        n_quantiles=10,
        budget=50_000,
    ),
    ("qrdqn", "LunarLander-v3"): dict(
        n_envs=1,
        learning_rate=linear(1.5e-3),
        batch_size=128,
        buffer_size=100_000,
        learning_starts=10_000,
        gamma=0.995,
        target_update_interval=1,
        train_freq=256,
        gradient_steps=-1,
        exploration_fraction=0.24,
        exploration_final_eps=0.18,
        net=[256, 256],
        n_quantiles=170,
        budget=100_000,
    ),
    # the MinAtar paper's DQN as soulsai's preset scales it, where SB3 has the setting (docstring)
    ("dqn", "MinAtar-Breakout-v0"): dict(
        n_envs=1,
        learning_rate=2.5e-4,
        batch_size=32,
        buffer_size=100_000,
        learning_starts=5000,
        gamma=0.99,
        target_update_interval=1000,
        train_freq=1,
        gradient_steps=1,
        n_steps=1,  # the paper's; soulsai's preset uses 3 (--hp n_steps=3: like for like)
        exploration_initial_eps=1.0,
        exploration_fraction=0.02,  # of the 500k budget: 10k steps
        exploration_final_eps=0.1,
        max_grad_norm=10.0,
        net=[128],
        cnn="minatar",
        budget=500_000,
    ),
    ("ppo", "LunarLander-v3"): dict(
        n_envs=16,
        n_steps=1024,
        batch_size=64,
        gae_lambda=0.98,
        gamma=0.999,
        n_epochs=4,
        ent_coef=0.01,
        budget=1_000_000,
    ),
}


# The zoo's env names that soulsai registers under its own namespace (importing the module).
ENV_IDS = {
    "CartPoleNoVel-v1": ("soulsai/CartPoleNoVel-v1", "soulsai.envs.memory"),
    "MinAtar-Breakout-v0": ("soulsai/MinAtar-Breakout-v0", "soulsai.envs.minatar"),
}


class StopRule(BaseCallback):
    """Stops when the mean of the last 20 finished training episodes reaches the target."""

    def __init__(self, target: float, max_steps: int, deadline: float) -> None:
        super().__init__()
        self.target, self.max_steps, self.deadline = target, max_steps, deadline
        self.returns: deque[float] = deque(maxlen=20)
        self.best = -float("inf")
        self.solved_at: int | None = None

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", []):
            ep = info.get("episode")
            if ep is not None:
                self.returns.append(float(ep["r"]))
                if len(self.returns) == 20:
                    mean = sum(self.returns) / 20
                    self.best = max(self.best, mean)
                    if mean >= self.target:
                        self.solved_at = self.num_timesteps
                        return False
        return self.num_timesteps < self.max_steps and time.time() < self.deadline


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--algo", choices=["dqn", "ppo", "ppo_lstm", "qrdqn"], required=True)
    ap.add_argument("--env", required=True)
    ap.add_argument("--target", type=float, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=2_000_000)
    ap.add_argument("--max-seconds", type=float, default=900)
    ap.add_argument("--delay", type=float, default=0.0, help="seconds slept per env step")
    ap.add_argument("--n-envs", type=int, default=None, help="override the zoo's env count")
    ap.add_argument(
        "--vec-env",
        choices=["auto", "dummy", "subproc"],
        default="auto",
        help="auto: SubprocVecEnv for PPO on a delayed env, else DummyVecEnv (faster for cheap "
        "envs on few cores: see BENCHMARKS.md)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0 = torch's default: every core, as a user of SB3 gets)",
    )
    ap.add_argument(
        "--hp",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one of the peer's hyperparameters (ZOO's keys; VALUE read as YAML), "
        "e.g. --hp n_steps=3 to give SB3's DQN soulsai's n-step returns",
    )
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    hp = dict(ZOO[(args.algo, args.env)])
    for item in args.hp:
        key, sep, value = item.partition("=")
        if not sep or not key:
            ap.error(f"--hp wants KEY=VALUE, got {item!r}")
        hp[key] = yaml.safe_load(value)
    # Schedules run over the zoo's budget of steps, as in RL-Zoo, even though we may let the
    # run go on past it to reach the target: SB3 scales them by total_timesteps.
    stretch = args.max_steps / hp.pop("budget")
    if "exploration_fraction" in hp:
        hp["exploration_fraction"] = min(1.0, hp["exploration_fraction"] / stretch)
    for key, value in list(hp.items()):
        if isinstance(value, tuple) and value[0] == "linear":
            start = value[1]
            hp[key] = lambda p, s=start: s * max(0.0, 1.0 - (1.0 - p) * stretch)
    n_envs = args.n_envs or hp.pop("n_envs")
    hp.pop("n_envs", None)
    normalize = hp.pop("normalize", False)
    env_id = args.env
    if env_id in ENV_IDS:
        env_id, module = ENV_IDS[env_id]
        importlib.import_module(module)
    wrapper = (lambda e: StepDelay(e, args.delay)) if args.delay > 0 else None
    if args.vec_env == "auto":  # processes pay off only when stepping costs more than IPC
        subproc = args.algo == "ppo" and n_envs > 1 and args.delay > 0
    else:
        subproc = args.vec_env == "subproc"
    vec_cls = SubprocVecEnv if subproc else DummyVecEnv
    env = make_vec_env(
        env_id, n_envs=n_envs, seed=args.seed, wrapper_class=wrapper, vec_env_cls=vec_cls
    )
    if normalize:  # the zoo's `normalize: true` (observations only here)
        env = VecNormalize(env, norm_obs=True, norm_reward=False)
    if args.algo == "ppo_lstm":
        from sb3_contrib import RecurrentPPO

        model = RecurrentPPO("MlpLstmPolicy", env, seed=args.seed, **hp)
    elif args.algo == "dqn" and "cnn" in hp:  # soulsai's CNN, soulsai's Adam epsilon
        kwargs = {
            "net_arch": hp.pop("net"),
            "features_extractor_class": SoulsaiCNN,
            "features_extractor_kwargs": {"encoder": hp.pop("cnn")},
            "optimizer_kwargs": {"eps": 1.5e-4},
        }
        model = DQN("CnnPolicy", env, seed=args.seed, policy_kwargs=kwargs, **hp)
    elif args.algo == "dqn":
        net = hp.pop("net")
        model = DQN("MlpPolicy", env, seed=args.seed, policy_kwargs={"net_arch": net}, **hp)
    elif args.algo == "qrdqn":
        from sb3_contrib import QRDQN  # only this peer needs sb3-contrib

        kwargs = {"net_arch": hp.pop("net"), "n_quantiles": hp.pop("n_quantiles")}
        model = QRDQN("MlpPolicy", env, seed=args.seed, policy_kwargs=kwargs, **hp)
    else:
        model = PPO("MlpPolicy", env, seed=args.seed, **hp)
    rule = StopRule(args.target, args.max_steps, T0 + args.max_seconds)
    model.learn(total_timesteps=args.max_steps, callback=rule)
    env.close()
    print(
        json.dumps(
            {
                "peer": "sb3",
                "algo": args.algo,
                "env": args.env,
                "seed": args.seed,
                "solved": rule.solved_at is not None,
                "env_steps": rule.num_timesteps,
                "best_rolling_return": rule.best,
                "wall_seconds": round(time.time() - T0, 2),
                "vec_env": vec_cls.__name__,
                "n_envs": n_envs,
                "torch_threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    gym.logger.min_level = 40
    main()
