"""soulsai: distributed deep RL for slow environments, through Redis."""

__version__ = "0.1.0"
