"""From inside an agent's nspawn container, nothing reaches another agent's web UI or acts
as the operator.

Two agents run in real containers under a daemon with its dashboard on: the victim runs
the real harness (its UI up), the other runs a probe instead of a harness. The probe tries,
from inside its container: every TCP port listening on the host (the containers share the
host's network), as the victim's UI (``GET /api/state``, then ``POST /api/send``) and as
the dashboard without a cookie (``/agent/<victim>/api/state``, ``/agent/<victim>/api/send``);
and the victim's UI socket by its host path. It writes what happened to its own state dir.
The operator, through the dashboard with the login, reaches the same UI at once.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import pytest

from hyperhive.config import Config
from hyperhive.registry import AgentState
from hyperhive.supervisor import Daemon, open_daemon
from tests.conftest import kill_leftovers, make_paths, require_backend
from tests.dashboard.conftest import base_url, session_cookie

from .fixtures import eventually, http
from .mock_anthropic import MockAnthropic
from .test_containers_e2e import daemon_env  # noqa: F401 - a fixture

#: Starts nspawn containers: on a machined host these run one at a time (tests/conftest.py).
pytestmark = pytest.mark.nspawn

PROBE = Path(__file__).resolve().parent.parent / "payloads" / "ui_probe.py"


@attrs.frozen
class Scenario:
    inproc: Daemon
    victim: str
    prober: str
    mark: str


@pytest.fixture
async def scenario(short_tmp: Path, daemon_env: None) -> AsyncIterator[Scenario]:  # noqa: F811
    require_backend("nspawn")
    # Names of their own: nspawn machine names are host-wide, and the probe sends only to
    # a UI that answers to this victim's name.
    victim, prober = "v" + secrets.token_hex(4), "p" + secrets.token_hex(4)
    mark = "mark-" + secrets.token_hex(8)
    paths = make_paths(short_tmp)
    # Every container runs the probe script; it becomes the real harness but in the prober's.
    command = (sys.executable, str(PROBE), prober, victim, str(paths.ui_socket(victim)), mark)
    config = Config(
        paths=paths,
        backend="nspawn",
        stop_agents_on_exit=True,
        dashboard_bind=("127.0.0.1:0",),
        harness_command=command,
    )
    try:
        async with open_daemon(config) as inproc:
            yield Scenario(inproc, victim, prober, mark)
    finally:
        kill_leftovers(short_tmp)


async def test_from_a_container_nothing_reaches_another_agents_ui(
    scenario: Scenario, mock_api: MockAnthropic
) -> None:
    inproc, victim, prober, mark = scenario.inproc, scenario.victim, scenario.prober, scenario.mark
    hive = inproc.hive
    paths = hive.config.paths
    await hive.spawn(victim)

    def victim_ui_up() -> bool:
        record = hive.registry.get(victim)
        return (
            record.state == AgentState.RUNNING
            and hive.registry.harnesses[victim] > 0
            and hive.registry.ui_url(victim) is not None
        )

    await eventually(victim_ui_up, within=90, what=f"{victim}'s harness and UI up")
    ui = paths.ui_socket(victim)
    assert stat.S_IMODE(ui.stat().st_mode) == 0o600
    assert stat.S_IMODE(ui.parent.stat().st_mode) == 0o700

    await hive.spawn(prober)
    report_file = paths.agent_dir(prober) / "state" / "probe.json"
    await eventually(report_file.exists, within=90, what="the probe's report")
    report: dict[str, Any] = json.loads(report_file.read_text())
    dashboard_port = urlsplit(base_url(inproc)).port
    assert dashboard_port is not None

    # The probe did look: it saw the host's listening ports, the dashboard's among them.
    ports = {int(p): r for p, r in report["ports"].items()}
    assert dashboard_port in ports, sorted(ports)
    # No port answered as the victim's UI, so nothing was sent through one.
    assert report["victim_ui_ports"] == [], report
    assert report["sent"] == [], report
    # The dashboard refuses both without the operator's login.
    assert ports[dashboard_port]["agent_state"] == 401, ports[dashboard_port]
    assert ports[dashboard_port]["agent_send"] == 401, ports[dashboard_port]
    # The victim's UI socket is not even there inside another container.
    assert report["victim_ui_socket"].startswith("FileNotFoundError"), report
    assert sorted(report["own_socket_dir"]) == ["mcp.sock"], report

    # Nothing reached the victim as the operator (or at all).
    assert not any(mark in m.body for m in await hive.broker.recent(victim, 50))
    assert not any(mark in r.last_user_text for r in mock_api.main_requests)

    # The operator, logged in to the dashboard, reaches the same UI meanwhile.
    assert inproc.auth is not None
    state = await http(
        dashboard_port,
        "GET",
        f"/agent/{victim}/api/state",
        headers={"cookie": session_cookie(inproc)},
    )
    assert state.status == 200 and state.json()["label"] == victim
    sent = await http(
        dashboard_port,
        "POST",
        f"/agent/{victim}/api/send",
        json_body={"body": "from the operator"},
        headers={"cookie": session_cookie(inproc), "x-csrf-token": inproc.auth.csrf},
    )
    assert sent.status == 200, sent.body
    [delivered] = [m for m in await hive.broker.recent(victim, 50) if m.id == sent.json()["id"]]
    assert delivered.from_ == "operator" and delivered.body == "from the operator"
    assert os.path.exists(ui)
