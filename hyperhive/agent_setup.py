"""Per-agent setup the daemon does around the container: config repos and applied settings."""

from __future__ import annotations

import tomllib
from pathlib import Path

import attrs
import trio

from hyperhive.config import Paths
from hyperhive.errors import RequestRefused


@attrs.frozen
class AppliedSettings:
    model: str = "haiku"
    env: dict[str, str] = attrs.Factory(dict)
    cpu_quota: str = "200%"
    memory_max: str = "4G"


async def load_applied_config(applied_dir: Path) -> AppliedSettings:
    """The settings of the applied ``agent.toml`` (defaults when there is none)."""
    path = trio.Path(applied_dir / "agent.toml")
    try:
        text = await path.read_text()
    except FileNotFoundError:
        return AppliedSettings()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RequestRefused(f"agent.toml: {exc}") from None
    return AppliedSettings(
        model=str(data.get("model", "haiku")),
        env={str(k): str(v) for k, v in dict(data.get("env", {})).items()},
        cpu_quota=str(data.get("cpu_quota", "200%")),
        memory_max=str(data.get("memory_max", "4G")),
    )


async def prepare_agent_repos(paths: Paths, name: str) -> None:
    """Create the proposed and applied config repos of an agent when missing."""
    await trio.Path(paths.applied_dir(name)).mkdir(parents=True, exist_ok=True)
