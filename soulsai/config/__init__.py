"""Configuration: one schema, defaults in config_d.yaml, overrides deep-merged on top."""

from soulsai.config.loader import config_from_json, default_config_dir, load_config, parse_set
from soulsai.config.schema import Config, DQNConfig

__all__ = [
    "Config",
    "DQNConfig",
    "config_from_json",
    "default_config_dir",
    "load_config",
    "parse_set",
]
