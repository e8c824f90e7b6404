"""Building the configured env and reading its spaces (clients, training node, evaluate)."""

from soulsai.envs.make import env_spaces, import_env_modules, make_single_env

__all__ = ["env_spaces", "import_env_modules", "make_single_env"]
