"""The operator's schedule commands (``hyperhive schedule …``, ``approve``) on a real daemon."""

from __future__ import annotations

import time

import pytest

from hyperhive.cli import parse_at
from tests.conftest import DaemonProcess, connect_agent
from tests.test_cli import cli

pytestmark = pytest.mark.both_stores  # the store's rules, on sqlite and on PostgreSQL


def test_parse_at_forms() -> None:
    assert parse_at("now", now=1000.0) == 1000.0
    assert parse_at("+90s", now=1000.0) == 1090.0
    assert parse_at("+10m", now=1000.0) == 1600.0
    assert parse_at("+2h", now=1000.0) == 8200.0
    assert parse_at("1234.5", now=1000.0) == 1234.5
    assert parse_at("2026-12-01T09:00:00+00:00") == 1796115600.0


async def test_agent_request_approved_with_the_cli(daemon: DaemonProcess) -> None:
    assert (await cli(daemon, "spawn", "alice")).code == 0
    alice = await connect_agent(daemon.paths, "alice")
    try:
        reply = await alice.request(
            {
                "cmd": "request_schedule",
                "targets": ["alice"],
                "body": "daily report",
                "first_at": time.time() + 3600,
                "cron": "0 9 * * *",
            }
        )
        assert reply["ok"], reply
        aid = reply["approval"]["id"]
        pending = await cli(daemon, "pending")
        assert "schedule" in pending.out and "cron '0 9 * * *'" in pending.out
        approved = await cli(daemon, "approve", str(aid))
        assert approved.code == 0 and "approved" in approved.out, approved
        [s] = (await cli(daemon, "schedule", "list", "--json")).json()["schedules"]
        assert (s["owner"], s["cron"], s["source"]) == ("alice", "0 9 * * *", f"approval:{aid}")
        listed = await cli(daemon, "schedule", "list")
        assert "cron 0 9 * * *" in listed.out and "alice" in listed.out
    finally:
        await alice.aclose()


async def test_schedule_commands(daemon: DaemonProcess) -> None:
    for name in ("alice", "bob"):
        assert (await cli(daemon, "spawn", name)).code == 0
    added = await cli(
        daemon, "schedule", "add", "alice", "bob", "-m", "ping", "--at", "+1h", "--every", "600",
        "--json",
    )  # fmt: skip
    assert added.code == 0, added
    sid = added.json()["schedule"]["id"]
    edited = await cli(
        daemon, "schedule", "edit", str(sid), "--every", "900", "--remove", "bob", "--json"
    )
    assert edited.json()["schedule"]["interval_seconds"] == 900
    assert edited.json()["schedule"]["targets"] == ["alice"]
    fired = await cli(daemon, "schedule", "fire", str(sid))
    assert fired.code == 0 and "fired 1" in fired.out, fired
    alice = await connect_agent(daemon.paths, "alice")
    try:
        got = await alice.request({"cmd": "recv", "max": 8})
        assert [(m["from"], m["body"]) for m in got["messages"]] == [("scheduler", "ping")]
    finally:
        await alice.aclose()
    cancelled = await cli(daemon, "schedule", "cancel", str(sid))
    assert cancelled.code == 0 and "ended" in cancelled.out
    assert (await cli(daemon, "schedule", "list")).out.strip() == "no schedules"
    assert str(sid) in (await cli(daemon, "schedule", "list", "--all")).out
    refused = await cli(daemon, "schedule", "fire", str(sid))
    assert refused.code == 1 and "has ended" in refused.err


@pytest.mark.parametrize("zone", ["Mars/Olympus"])
def test_run_refuses_an_unknown_time_zone(zone: str) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "hyperhive", "run", "--timezone", zone, "--state-dir",
         "/nonexistent/x", "--run-dir", "/nonexistent/y"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 1 and "unknown time zone" in result.stderr
