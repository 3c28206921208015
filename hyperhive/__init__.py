"""hyperhive: a swarm of Claude Code agents on one Linux host, under one trio daemon."""

__version__ = "0.1.0"
