"""The one validated config schema. Defaults live in config/config_d.yaml, not here.

Every model forbids unknown keys, so a typo is an error that names the key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_serializer,
    field_validator,
    model_validator,
)

from soulsai.config.trust import redact_url
from soulsai.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class WrapperConfig(_Strict):
    name: str = Field(
        description="import path of a gymnasium.Wrapper, e.g. gymnasium.wrappers.TimeLimit"
    )
    kwargs: dict[str, Any] = {}


class AtariConfig(_Strict):
    """soulsai's Atari preprocessing (soulsai/envs/atari.py): Gymnasium's AtariPreprocessing,
    then frame stacking. Episodic life and reward clipping apply while training only."""

    frame_skip: int = Field(default=4, ge=1, le=16)
    screen_size: int = Field(default=84, ge=8, le=512)
    grayscale: bool = True
    noop_max: int = Field(default=30, ge=0, le=1000)
    terminal_on_life_loss: bool = True
    clip_reward: bool = True
    fire_reset: bool = True
    frame_stack: int = Field(default=4, ge=1, le=16)


class EnvConfig(_Strict):
    """`imports`, `wrappers` and an `id` of the form `module:Env-v0` name code: they are
    local-only (soulsai/config/trust.py), never taken from Redis, a run folder or a preset."""

    id: str
    imports: list[str]
    kwargs: dict[str, Any]
    wrappers: list[WrapperConfig]
    num_envs: int = Field(ge=1, le=256)
    step_delay: float = Field(ge=0.0, le=10.0)
    # Dict/Tuple observations (soulsai/model/obs.py); defaults so that configs saved or
    # published before these keys existed still load
    obs_keys: list[str] | None = None  # keys (or subtrees) to keep; "-name" drops; None: all
    drop_constant_obs: bool = True
    discrete_obs: Literal["onehot", "embedding"] = "onehot"
    embedding_dim: int = Field(default=8, ge=1, le=1024)
    # Valid-action masks (soulsai/model/masks.py): None = off; an info key such as
    # "action_mask" (SoulsGym); "action_masks()" asks the env's method (sb3-contrib's convention)
    action_mask: str | None = Field(
        default=None, pattern=r"^([A-Za-z0-9_.\-]{1,64}|action_masks\(\))$"
    )
    # Image observations (soulsai/model/cnn_spec.py): uint8 frames go through a CNN
    image_encoder: Literal["nature", "impala", "minatar", "flatten"] = "nature"
    image_channels: Literal["auto", "last", "first"] = "auto"
    image_features: int | None = Field(default=None, ge=0, le=65536)
    impala_channels: list[int] = Field(default=[16, 32, 32], min_length=1, max_length=8)
    atari: AtariConfig | None = None  # Atari preprocessing (null: the env as gymnasium makes it)
    # DQN sends and stores each image frame once (soulsai/model/specs.py frame_rows): auto | off
    frame_rows: Literal["auto", "off"] = "auto"

    @field_validator("frame_rows", mode="before")
    @classmethod
    def _off_is_false_in_yaml(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML (1.1) reads a bare `off` as false

    @field_validator("impala_channels")
    @classmethod
    def _channels_bounded(cls, v: list[int]) -> list[int]:
        if any(not 1 <= c <= 1024 for c in v):
            raise ValueError("every IMPALA stage has 1 to 1024 channels")
        return v

    # Which file (or --set) set each key, for errors that must name it: load_config fills it.
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def sources(self) -> dict[str, str]:
        return self._sources

    def __eq__(self, other: object) -> bool:  # where the values came from is no part of them
        if not isinstance(other, EnvConfig):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # as pydantic's own (mutable models)


class ClientConfig(_Strict):
    batch_size: int = Field(ge=1, le=65536)
    flush_interval: float = Field(gt=0.0, le=60.0)
    heartbeat_interval: float = Field(gt=0.0, le=60.0)
    heartbeat_timeout: float = Field(gt=0.0, le=600.0)
    weights_poll_interval: float = Field(gt=0.0, le=60.0)
    config_wait: float = Field(ge=0.0)
    env_retries: int = Field(ge=0, le=1000)
    env_retry_backoff: float = Field(ge=0.0, le=60.0)
    # defaults only so that configs published before these keys existed still load
    offline_grace: float = Field(default=30.0, ge=0.0, le=86400.0)
    outbox_max_bytes: int = Field(default=256 << 20, ge=1 << 20, le=1 << 40)

    @model_validator(mode="after")
    def _timeout_covers_interval(self) -> ClientConfig:
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError("heartbeat_timeout must be larger than heartbeat_interval")
        return self


class TrainingConfig(_Strict):
    metrics_port: int = Field(ge=0, le=65535)
    metrics_host: str = Field(min_length=1)
    max_message_bytes: int = Field(ge=1024, le=1 << 30)
    # a default only so that configs saved or published before the key existed still load
    max_weights_bytes: int = Field(default=64 << 20, ge=1 << 20, le=1 << 30)
    max_batch: int = Field(ge=1, le=1 << 20)
    intake_batch: int = Field(ge=1, le=100000)
    max_queue: int = Field(ge=1, le=10_000_000)
    log_interval: float = Field(gt=0.0)
    device: str
    threads: int = Field(ge=0, le=256)
    # a default only so that configs saved or published before the key existed still load
    weights_dtype: Literal["float32", "float16"] = "float32"
    # bounds on received experience (docs/protocol.md); defaults for configs saved before them
    max_abs_obs: float = Field(default=1e6, gt=0.0, le=1e30)
    max_abs_reward: float = Field(default=1e6, gt=0.0, le=1e30)
    # learner stats as TensorBoard scalars in <run>/tensorboard/training (soulsai/scalars.py);
    # a default so that configs saved before the key existed still load
    tensorboard: bool = True
    # image frames on the wire (soulsai/transport/compress.py): auto = lz4 where installed
    frame_compression: Literal["auto", "none", "lz4", "zstd"] = "auto"


class DQNConfig(_Strict):
    gamma: float = Field(gt=0.0, le=1.0)
    n_step: int = Field(ge=1, le=100)
    lr: float = Field(gt=0.0, lt=1.0)
    batch_size: int = Field(ge=1, le=65536)
    buffer_size: int = Field(ge=1, le=100_000_000)
    learning_starts: int = Field(ge=0)
    replay_ratio: float = Field(gt=0.0, le=10000.0)
    max_update_debt: int = Field(ge=2)
    max_client_debt: int = Field(default=1024, ge=0)  # default: configs saved before the key
    throttle: bool
    hidden: list[int] = Field(min_length=1)
    target_update: Literal["hard", "polyak"]
    target_update_interval: int = Field(ge=1)
    tau: float = Field(gt=0.0, le=1.0)
    grad_clip: float = Field(gt=0.0)
    huber_delta: float = Field(gt=0.0)
    max_model_delay: int = Field(ge=0)
    update_samples: int = Field(ge=1)
    exploration: Literal["schedule", "ladder"]
    eps_start: float = Field(ge=0.0, le=1.0)
    eps_end: float = Field(ge=0.0, le=1.0)
    eps_decay_steps: int = Field(ge=1)
    ladder_eps: float = Field(ge=0.0, le=1.0)
    ladder_alpha: float = Field(ge=0.0)
    normalize_obs: bool
    # double DQN (van Hasselt et al. 2016): the online net picks the next action, the target
    # net values it; false: the target net does both (Mnih et al. 2015). Default: configs
    # saved before the key.
    double: bool = True
    # Issue 19's options (soulsai/model/heads.py, soulsai/training/prioritized.py). Defaults are
    # the plain double DQN of before, so configs and checkpoints saved before them still load.
    dueling: bool = False  # value + mean-subtracted advantage streams
    n_quantiles: int = Field(default=1, ge=1, le=256)  # > 1: quantile regression DQN
    quantile_kappa: float = Field(default=1.0, ge=0.0, le=1e6)  # quantile Huber threshold
    noisy: bool = False  # noisy-net head instead of epsilon-greedy (clients act with epsilon 0)
    noisy_sigma0: float = Field(default=0.5, gt=0.0, le=10.0)
    prioritized: bool = False  # prioritized replay (proportional, Schaul et al.)
    per_alpha: float = Field(default=0.6, ge=0.0, le=10.0)
    per_beta_start: float = Field(default=0.4, ge=0.0, le=1.0)
    # updates over which beta anneals to 1; None: the updates max_steps implies
    per_beta_steps: int | None = Field(default=None, ge=0)
    per_eps: float = Field(default=1e-6, gt=0.0, le=1.0)


class PPOConfig(_Strict):
    gamma: float = Field(gt=0.0, le=1.0)
    gae_lambda: float = Field(ge=0.0, le=1.0)
    lr: float = Field(gt=0.0, lt=1.0)
    anneal_lr: bool
    n_steps_total: int = Field(ge=1, le=10_000_000)
    fragment_length: int = Field(ge=1, le=1 << 20)
    num_minibatches: int = Field(ge=1)
    update_epochs: int = Field(ge=1, le=1000)
    clip_coef: float = Field(gt=0.0)
    clip_vloss: bool
    vf_coef: float = Field(ge=0.0)
    ent_coef: float = Field(ge=0.0)
    max_grad_norm: float = Field(gt=0.0)
    target_kl: float | None = Field(gt=0.0)
    norm_adv: bool
    hidden: list[int] = Field(min_length=1)
    shared_network: bool
    activation: Literal["tanh", "relu"]
    init_log_std: float = Field(ge=-20.0, le=5.0)
    normalize_obs: bool
    scale_rewards: bool
    pause_clients: bool
    share_wait: float = Field(ge=0.0, le=3600.0)
    client_timeout: float = Field(gt=0.0)
    min_fraction: float = Field(gt=0.0, le=1.0)
    # recurrent policies (soulsai/model/cores.py): defaults so that configs saved or published
    # before these keys existed still load, as the feed-forward PPO they were
    recurrent: Literal["lstm", "gru"] | None = None
    recurrent_size: int = Field(default=64, ge=1, le=4096)


class R2D2Config(_Strict):
    """algo: r2d2's own keys (soulsai/training/algorithms/r2d2.py); what it shares with DQN
    (lr, gamma, n_step, replay, exploration, dueling, prioritized, ...) is read from `dqn`.
    Defaults so that configs saved before the section load."""

    core: Literal["lstm", "gru"] = "lstm"
    core_size: int = Field(default=64, ge=1, le=4096)
    chunk: int = Field(default=20, ge=2, le=256)  # steps per chunk on the wire and in replay
    burn_in: int = Field(default=10, ge=0, le=256)  # steps of the predecessor, no gradient
    value_rescale: bool = True  # h(x) = sign(x)(sqrt(|x| + 1) - 1) + eps x on the targets
    rescale_eps: float = Field(default=1e-3, ge=0.0, le=1.0)
    priority_eta: float = Field(default=0.9, ge=0.0, le=1.0)  # eta max|td| + (1 - eta) mean|td|


class CheckpointConfig(_Strict):
    every: int = Field(ge=0)
    save_buffer: bool
    keep_last: int = Field(ge=0, le=100000)


class WinsConfig(_Strict):
    """An episode is a win when `record[key] <op> threshold` (e.g. info.boss_hp le 0)."""

    key: str = Field(min_length=1)
    op: Literal["gt", "ge", "lt", "le", "eq", "ne"]
    threshold: float


class TelemetryConfig(_Strict):
    http_port: int = Field(ge=0, le=65535)
    http_host: str = Field(min_length=1)
    cors_origins: list[str] = Field(max_length=32)
    update_interval: int = Field(ge=1)
    moving_average: int = Field(ge=1)
    stream_maxlen: int = Field(ge=100)
    max_record_bytes: int = Field(ge=256)
    max_abs_return: float = Field(default=1e9, gt=0.0, le=1e30)  # default: older configs
    metrics: list[str]
    info_metrics: bool
    wins: WinsConfig | None
    log_keys: list[str]
    figure_x: Literal["env_steps", "episode", "wall_time", "time"]
    figure_y: list[str] = Field(min_length=1, max_length=8)
    figure_interval: float = Field(ge=0.0)
    best_key: str = Field(min_length=1)
    best_interval: int = Field(ge=1)
    # episode series as TensorBoard scalars in <run>/tensorboard/telemetry; a default so that
    # configs saved before the key existed still load
    tensorboard: bool = True

    @model_validator(mode="after")
    def _known_series(self) -> TelemetryConfig:
        base = {"episode", "env_steps", "wall_time", "time"}
        raw = set(self.metrics) | ({"wins"} if self.wins else set())
        known = base | raw | {f"{k}_avg" for k in raw}
        for field in ("log_keys", "figure_y"):
            for name in getattr(self, field):
                if name not in known and not (self.info_metrics and name.startswith("info.")):
                    raise ValueError(
                        f"{field}: unknown series {name!r}; known: {sorted(known)}"
                        + (" and info.<key>[_avg]" if self.info_metrics else "")
                    )
        if self.best_key not in raw and not (
            self.info_metrics and self.best_key.startswith("info.")
        ):
            raise ValueError(f"best_key: {self.best_key!r} is not among metrics {sorted(raw)}")
        return self


class WandbConfig(_Strict):
    """Optional Weights & Biases logging of both server nodes (soulsai/scalars.py); off by
    default. The API key, when online, comes from wandb's own login or WANDB_API_KEY."""

    enabled: bool = False
    project: str = Field(default="soulsai", pattern=r"^[A-Za-z0-9_.\-]{1,128}$")
    entity: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.\-]{1,128}$")
    mode: Literal["offline", "online"] = "offline"


Algo = Literal["dqn", "ppo", "r2d2"]  # one entry per algorithm (with its section below)
ALGOS: tuple[str, ...] = get_args(Algo)


class Config(_Strict):
    algo: Algo
    preset: str | None = None  # the preset file that applied (configs saved before presets: none)
    seed: int = Field(ge=0)
    redis_address: str = Field(min_length=1)
    redis_port: int = Field(ge=1, le=65535)
    redis_url: str | None
    redis_username: str | None = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    redis_tls_ca: str | None
    redis_tls_cert: str | None
    redis_tls_key: str | None
    redis_allow_insecure: bool
    connect_wait: float = Field(ge=0.0, le=86400.0)
    key_prefix: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    save_dir: str
    max_steps: int = Field(ge=0)
    target_return: float | None
    env: EnvConfig
    client: ClientConfig
    training: TrainingConfig
    dqn: DQNConfig
    ppo: PPOConfig
    r2d2: R2D2Config = R2D2Config()  # a default: configs saved before the section load
    checkpoint: CheckpointConfig
    telemetry: TelemetryConfig
    wandb: WandbConfig = WandbConfig()  # a default: configs saved before the section load

    @field_validator("redis_url")
    @classmethod
    def _url_scheme(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("redis://", "rediss://")):
            raise ValueError("must start with redis:// or rediss://")
        return url

    @field_serializer("redis_url")
    def _url_without_credentials(self, url: str | None) -> str | None:
        """Every dump (config.json, checkpoints, the config published in Redis) leaves out a
        user and password written into the URL: those stay in this process."""
        return redact_url(url)


def check_ppo_config(cfg: Config) -> None:
    """Cross-key checks the schema cannot express; a ConfigError names the keys."""
    rows = cfg.ppo.fragment_length * cfg.env.num_envs
    if rows > cfg.training.max_batch:
        raise ConfigError(
            f"config error: ppo.fragment_length * env.num_envs = {rows} exceeds "
            f"training.max_batch = {cfg.training.max_batch} (one message carries all fragments)"
        )


def check_r2d2_config(cfg: Config) -> None:
    """r2d2's cross-key checks: the burn-in comes from one predecessor chunk, the n-step
    targets of a chunk's last steps from one successor; no quantile or noisy head, and
    always double DQN."""
    r, d = cfg.r2d2, cfg.dqn
    if r.burn_in > r.chunk:
        raise ConfigError(
            f"config error: r2d2.burn_in = {r.burn_in} exceeds r2d2.chunk = {r.chunk} "
            "(the burn-in is the end of the previous chunk)"
        )
    if d.n_step > r.chunk:
        raise ConfigError(
            f"config error: dqn.n_step = {d.n_step} exceeds r2d2.chunk = {r.chunk} (the "
            "n-step targets of a chunk's last steps reach into one successor chunk)"
        )
    unsupported = (
        ("dqn.noisy", d.noisy),
        ("dqn.n_quantiles", d.n_quantiles > 1),
        ("dqn.double = false", not d.double),
    )
    for key, on in unsupported:
        if on:
            raise ConfigError(f"config error: {key} is not available with algo r2d2")


# cfg.algo -> its cross-key checks (a fixed table: an algorithm with such checks adds one entry)
ALGO_CHECKS: dict[str, Callable[[Config], None]] = {
    "ppo": check_ppo_config,
    "r2d2": check_r2d2_config,
}


def check_algo_config(cfg: Config) -> None:
    """The cross-key checks of the configured algorithm, if it has any."""
    check = ALGO_CHECKS.get(cfg.algo)
    if check is not None:
        check(cfg)
