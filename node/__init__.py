"""shoal's node: the daemon every host runs (config, store, agent, API, CLI)."""

__version__ = "0.1.0"
