"""What a valid model looks like, worked out without torch: the tensor names and shapes of each
network's state_dict (what the training node broadcasts and a client checks), the action shape,
and the observation normalizer's constants shared by the torch networks and their numpy twins."""

from __future__ import annotations

import math

import gymnasium as gym

from soulsai.config.schema import DQNConfig, EnvConfig, PPOConfig
from soulsai.errors import ConfigError
from soulsai.model.cores import core_weight_shapes
from soulsai.model.obs import ObsLayout, build_layout, env_layout
from soulsai.model.obs_encode import encoder_weight_shapes

# The observation normalizer shipped with the weights: (obs - mean) / sqrt(var + NORM_EPS),
# clipped to +-NORM_CLIP. The training node's torch module and the clients' numpy use these.
NORM_EPS = 1e-8
NORM_CLIP = 10.0


def action_shape(action_space: gym.Space) -> tuple[int, ...]:
    """Shape of one PPO action: () for Discrete, the Box's shape; other spaces: ConfigError."""
    if isinstance(action_space, gym.spaces.Discrete):
        return ()
    if isinstance(action_space, gym.spaces.Box):
        return tuple(action_space.shape)
    raise ConfigError(
        f"env: PPO needs a Discrete or Box action space, got {type(action_space).__name__}"
    )


Shapes = dict[str, tuple[int, ...]]


def _normalizer_shapes(obs_shape: tuple[int, ...]) -> Shapes:
    return {"obs_norm.mean": obs_shape, "obs_norm.var": obs_shape, "obs_norm.count": ()}


def _linears(prefix: str, first: int, sizes: list[int]) -> Shapes:
    """Linear layers of an nn.Sequential that interleaves activations: indices first,
    first + 2, ...; `sizes` are the features in, then out of each layer."""
    shapes: Shapes = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        shapes[f"{prefix}.{first + 2 * i}.weight"] = (n_out, n_in)
        shapes[f"{prefix}.{first + 2 * i}.bias"] = (n_out,)
    return shapes


def dqn_weight_shapes(
    cfg: DQNConfig,
    obs: tuple[int, ...] | ObsLayout,
    n_actions: int,
    discrete_obs: str = "onehot",
    embedding_dim: int = 8,
) -> Shapes:
    """The state_dict of soulsai.model.nets.QNetwork: normalizer, the encoder's embedding tables
    (env.discrete_obs: embedding), then mlp = Flatten, Linear, ReLU, ..., Linear (so its Linear
    layers sit at odd indices). With dqn.dueling, dqn.noisy or dqn.n_quantiles > 1 the last
    Linear is a `head` instead (`q_head_shapes`). `obs` is the observation layout, or a bare
    Box's shape."""
    if not isinstance(obs, ObsLayout):
        base = _normalizer_shapes(tuple(obs))
        n_in = math.prod(obs)
    else:
        base = {
            **_normalizer_shapes(obs.norm_shape),
            **encoder_weight_shapes(obs, discrete_obs, embedding_dim),
        }
        n_in = obs.n_features(discrete_obs, embedding_dim)
    if not has_q_head(cfg):
        return {**base, **_linears("mlp", 1, [n_in, *cfg.hidden, n_actions])}
    torso = _linears("mlp", 1, [n_in, *cfg.hidden])
    if cfg.noisy:  # every Linear of the MLP is noisy
        torso = {}
        for i, (a, b) in enumerate(zip([n_in, *cfg.hidden[:-1]], cfg.hidden, strict=True)):
            torso |= _noisy(f"mlp.{1 + 2 * i}.", a, b)
    return {**base, **torso, **q_head_shapes(cfg, cfg.hidden[-1], n_actions)}


def _noisy(prefix: str, in_features: int, out_features: int) -> Shapes:
    """A NoisyLinear: means, scales and its noise buffers f(e_in), f(e_out)."""
    return {
        prefix + "weight_mu": (out_features, in_features),
        prefix + "weight_sigma": (out_features, in_features),
        prefix + "bias_mu": (out_features,),
        prefix + "bias_sigma": (out_features,),
        prefix + "eps_in": (in_features,),
        prefix + "eps_out": (out_features,),
    }


def has_q_head(cfg: DQNConfig) -> bool:
    """True when the Q-network ends in a `QHead` (dueling, noisy or quantiles) rather than the
    plain last Linear of `mlp` (whose tensor names older checkpoints and clients know)."""
    return cfg.dueling or cfg.noisy or cfg.n_quantiles > 1


def q_head_shapes(cfg: DQNConfig, in_features: int, n_actions: int) -> Shapes:
    """The `head.*` tensors of soulsai.model.heads.QHead: `value` (N outputs) and `advantage`
    (A * N) when dueling, else `out` (A * N); noisy layers hold weight_mu, weight_sigma,
    bias_mu, bias_sigma and the noise buffers eps_in, eps_out."""
    n = cfg.n_quantiles
    outs = {"value": n, "advantage": n_actions * n} if cfg.dueling else {"out": n_actions * n}
    shapes: Shapes = {}
    for name, n_out in outs.items():
        prefix = f"head.{name}."
        if cfg.noisy:
            shapes |= _noisy(prefix, in_features, n_out)
        else:
            shapes[prefix + "weight"], shapes[prefix + "bias"] = (n_out, in_features), (n_out,)
    return shapes


def ppo_weight_shapes(
    cfg: PPOConfig, obs_space: gym.Space, action_space: gym.Space, env: EnvConfig | None = None
) -> Shapes:
    """The state_dict of soulsai.model.nets.ActorCritic for this config and these spaces: the
    observation layout of `env` (obs_keys, drop_constant_obs; defaults without it), its
    encoder's embedding tables (env.discrete_obs: embedding) and the normalizer over the
    continuous features; with ppo.recurrent the `core` (LSTM/GRU) after the encoder (after
    the shared torso), the heads' MLPs then taking its ppo.recurrent_size outputs."""
    layout = env_layout(env, obs_space) if env is not None else build_layout(obs_space)
    discrete_obs = env.discrete_obs if env is not None else "onehot"
    embedding_dim = env.embedding_dim if env is not None else 8
    if isinstance(action_space, gym.spaces.Discrete):
        action_dim = int(action_space.n)
    else:
        action_dim = math.prod(action_shape(action_space))
    n_in = layout.n_features(discrete_obs, embedding_dim)
    hidden = list(cfg.hidden)
    shapes = _normalizer_shapes(layout.norm_shape)
    shapes |= encoder_weight_shapes(layout, discrete_obs, embedding_dim)
    if cfg.recurrent is not None:
        size = cfg.recurrent_size
        core_in = hidden[-1] if cfg.shared_network else n_in
        shapes |= core_weight_shapes(cfg.recurrent, core_in, size)
        if cfg.shared_network:
            shapes |= _linears("torso", 0, [n_in, *hidden])
            hidden = []
        n_in = size
    if cfg.shared_network and hidden:
        shapes |= _linears("torso", 0, [n_in, *hidden])
        shapes |= _linears("actor", 0, [hidden[-1], action_dim])
        shapes |= _linears("critic", 0, [hidden[-1], 1])
    elif cfg.shared_network:  # torso, core, then only the output layers
        shapes |= _linears("actor", 0, [n_in, action_dim])
        shapes |= _linears("critic", 0, [n_in, 1])
    else:
        shapes |= _linears("actor", 0, [n_in, *hidden, action_dim])
        shapes |= _linears("critic", 0, [n_in, *hidden, 1])
    if not isinstance(action_space, gym.spaces.Discrete):
        shapes["log_std"] = (action_dim,)
    return shapes
