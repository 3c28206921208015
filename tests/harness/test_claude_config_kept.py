"""claude's own config file survives a container restart, so the agent's log stays quiet.

In an nspawn container ``/root`` is volatile and only ``/root/.claude`` is bound to the
host. claude keeps ``.claude.json`` in ``$HOME`` unless ``CLAUDE_CONFIG_DIR`` says
otherwise; without it, every restart lost the file and claude printed "Claude
configuration file not found … A backup file exists … restore it" into the log an
operator reads with ``hyperhive logs``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hyperhive.supervisor import Hive, open_hive
from tests.conftest import kill_leftovers, require_backend

from .mock_anthropic import MockAnthropic
from .test_containers_e2e import config, daemon_env, running_with_harness, turned

#: Starts nspawn containers: on a machined host these run one at a time (tests/conftest.py).
pytestmark = pytest.mark.nspawn

__all__ = ["daemon_env"]  # the fixture, used by name

LOST = "Claude configuration file not found"


@pytest.fixture
async def nspawn_hive(short_tmp: Path, daemon_env: None) -> AsyncIterator[Hive]:
    require_backend("nspawn")
    try:
        async with open_hive(config(short_tmp, "nspawn")) as hive:
            yield hive
    finally:
        kill_leftovers(short_tmp)


async def test_claude_config_survives_a_restart(nspawn_hive: Hive, mock_api: MockAnthropic) -> None:
    hive = nspawn_hive
    await hive.spawn("alice")
    await running_with_harness(hive, "alice")
    await turned(hive, mock_api, "alice", "first: hi")
    claude_dir = hive.config.paths.agent_dir("alice") / "claude"
    assert (claude_dir / ".claude.json").is_file()  # kept beside the login, on the host

    await hive.lifecycle("restart", "alice")
    await running_with_harness(hive, "alice")
    await turned(hive, mock_api, "alice", "second: hi again")
    log = (hive.config.paths.agent_dir("alice") / "logs" / "container.log").read_text()
    assert LOST not in log, log[-2000:]
