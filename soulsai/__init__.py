"""soulsai: distributed deep RL for slow environments, through Redis.

`soulsai.train(...)` runs the whole stack on this machine from Python (soulsai/api.py); it is
imported on first use, so that `import soulsai` stays light and torch-free on a client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["train"]

if TYPE_CHECKING:
    from soulsai.api import train


def __getattr__(name: str) -> Any:
    if name == "train":
        from soulsai.api import train

        return train
    raise AttributeError(f"module 'soulsai' has no attribute {name!r}")
