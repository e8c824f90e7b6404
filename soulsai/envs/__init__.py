"""Building the configured env and reading its spaces (clients, training node, evaluate).

`soulsai.envs.soulslike` (imported only on demand, e.g. by `env.imports`) registers a
SoulsGym-shaped test fight, `soulsai/IudexLike-v0`; `soulsai.envs.memory` the memory checks
`soulsai/CartPoleNoVel-v1` and `soulsai/Recall-v0`. `soulsai.envs.minatar` registers the
MinAtar games, `soulsai/MinAtar-<Game>-v0`, here at once (cheap: the `minatar` package is
imported only when one is made)."""

from soulsai.envs import minatar as _minatar  # noqa: F401  # registers soulsai/MinAtar-*
from soulsai.envs.make import env_spaces, import_env_modules, make_single_env

__all__ = ["env_spaces", "import_env_modules", "make_single_env"]
