"""Reminders across a real daemon restart, and the operator's CLI for them."""

from __future__ import annotations

import json
import signal
import time

import pytest
import trio

from hyperhive.client import Client
from hyperhive.protocol import Recv
from tests.conftest import DaemonProcess
from tests.test_cli import cli
from tests.test_daemon_process import spawn_agents

pytestmark = pytest.mark.both_stores  # the store's rules, on sqlite and on PostgreSQL


async def test_a_reminder_due_while_the_daemon_is_down_fires_once_after_start(
    daemon: DaemonProcess, nursery: trio.Nursery
) -> None:
    await spawn_agents(daemon, ["alice"])
    async with await Client.connect(daemon.paths.agent_socket("alice")) as alice:
        due = time.time() + 1.5
        soon = await alice.request({"cmd": "remind", "body": "while down", "at": due})
        later = await alice.request({"cmd": "remind", "body": "later", "in_seconds": 3600})
        assert soon["ok"] and later["ok"]
    assert await daemon.stop(signal.SIGTERM) == 0
    # The daemon stays down until the reminder's time has passed on the wall clock.
    await trio.sleep(max(0.0, due - time.time()) + 0.2)
    await daemon.start(nursery)
    async with await Client.connect(daemon.paths.agent_socket("alice")) as alice:
        got = await alice.call(Recv(wait_seconds=10, max=32))
        assert [(m.from_, m.body) for m in got.messages] == [("reminder", "while down")]  # type: ignore[attr-defined]
    # A second restart does not fire it again; the later one is still pending.
    assert await daemon.stop(signal.SIGTERM) == 0
    await daemon.start(nursery)
    async with await Client.connect(daemon.paths.agent_socket("alice")) as alice:
        assert (await alice.call(Recv(wait_seconds=1, max=32))).messages == []  # type: ignore[attr-defined]
        loose = await alice.request({"cmd": "get_loose_ends"})
        assert [r["body"] for r in loose["reminders"]] == ["later"]
    listed = await daemon.call({"cmd": "reminders", "include_sent": True})
    sent = {r["body"]: r["sent_at"] is not None for r in listed["reminders"]}
    assert sent == {"while down": True, "later": False}


async def test_the_operator_lists_and_cancels_reminders_with_the_cli(
    daemon: DaemonProcess,
) -> None:
    await spawn_agents(daemon, ["alice"])
    async with await Client.connect(daemon.paths.agent_socket("alice")) as alice:
        reply = await alice.request(
            {"cmd": "remind", "body": "water the plants", "in_seconds": 600}
        )
    rid = reply["reminder"]["id"]
    r = await cli(daemon, "reminders")
    assert r.code == 0 and "water the plants" in r.out and "alice" in r.out
    r = await cli(daemon, "reminders", "--json")
    assert [x["id"] for x in json.loads(r.out)["reminders"]] == [rid]
    listed = await daemon.call({"cmd": "list"})
    assert {a["name"]: a["pending_reminders"] for a in listed["agents"]}["alice"] == 1
    # Retry is for a reminder whose delivery failed (tests/test_reminders.py); this one has not.
    r = await cli(daemon, "reminder", "retry", str(rid))
    assert r.code == 1 and f"reminder {rid} has not failed" in r.err
    r = await cli(daemon, "reminder", "cancel", str(rid))
    assert (r.code, r.out.strip()) == (0, f"reminder {rid} of alice is cancelled")
    r = await cli(daemon, "reminder", "cancel", str(rid))
    assert r.code == 1 and f"no reminder with id {rid}" in r.err
    r = await cli(daemon, "reminders")
    assert r.code == 0 and "no pending reminders" in r.out
