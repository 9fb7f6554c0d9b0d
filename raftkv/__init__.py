"""raftkv: a replicated, strongly consistent key-value store built on Raft."""

__version__ = "0.1.0"
