"""Per-agent setup around the container: the config repos and the applied settings."""

from __future__ import annotations

from pathlib import Path

from hyperhive.agent_config import AgentConfig
from hyperhive.config import Paths
from hyperhive.config_repo import applied_config, ensure_repos


async def load_applied_config(applied_dir: Path) -> AgentConfig:
    """The applied ``agent.toml`` (defaults when absent); InvalidAgentConfig when broken."""
    return await applied_config(applied_dir)


async def prepare_agent_repos(paths: Paths, name: str, seed: str) -> None:
    """Create the proposed and applied config repos of an agent when missing."""
    await ensure_repos(paths.agent_dir(name) / "config", paths.applied_dir(name), seed)
