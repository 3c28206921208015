"""Reminders: set through the agent socket, delivered once at their time into the agent's own
inbox (trio's clock), after downtime once at start, capped, spilled, retried, cancelled."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from hyperhive.client import Client
from hyperhive.clocks import TrioWallClock
from hyperhive.config import (
    MAX_PENDING_REMINDERS,
    MAX_RECV_WAIT_SECONDS,
    MAX_REMINDER_ATTEMPTS,
    PROTOCOL_VERSION,
    REMINDER_RETRY_BACKOFF,
    REMINDER_SPILL_CHARS,
    Config,
)
from hyperhive.errors import RequestRefused
from hyperhive.hive import Hive
from hyperhive.protocol import Recv
from hyperhive.reminders import check_remind, state_relative
from hyperhive.supervisor import open_hive
from tests.conftest import Connect, connect_agent, make_paths, wait_until

pytestmark = pytest.mark.both_stores  # the store's rules, on sqlite and on PostgreSQL


@asynccontextmanager
async def hive_on_trio_clock(root: Path, database: str | None) -> AsyncIterator[Hive]:
    config = Config(
        paths=make_paths(root), wall_clock=TrioWallClock(), backend="external", database=database
    )
    async with open_hive(config) as hive:
        yield hive


async def test_a_reminder_fires_at_its_time_into_the_own_inbox(
    short_tmp: Path, daemon_clock: MockClock, database: str | None
) -> None:
    async with hive_on_trio_clock(short_tmp, database) as hive:
        await hive.spawn("alice")
        alice = await connect_agent(hive.config.paths, "alice", role="harness")
        try:
            set_at = trio.current_time()
            reply = await alice.request(
                {"cmd": "remind", "body": "check the build", "in_seconds": 600}
            )
            assert reply["ok"], reply
            rid = reply["reminder"]["id"]
            meta = await alice.request({"cmd": "get_agent_meta"})
            assert meta["pending_reminders"] == 1
            # Parked receives of at most 180 s each: only the reminder wakes one.
            messages: list[Any] = []
            while not messages:
                got = await alice.call(Recv(wait_seconds=MAX_RECV_WAIT_SECONDS, ack=False))
                messages = got.messages  # type: ignore[attr-defined]
            fired_after = trio.current_time() - set_at
        finally:
            await alice.aclose()
        [message] = messages
        assert (message.from_, message.to, message.body) == ("reminder", "alice", "check the build")
        assert 600 <= fired_after < 601
        info = await hive.reminders.get(rid)
        assert info.sent_at is not None and info.attempt_count == 0
        assert await hive.reminders.pending_count("alice") == 0
        [agent] = [a for a in await hive.agent_infos() if a.name == "alice"]
        assert agent.pending_reminders == 0


async def test_cancel_before_the_time_means_it_never_fires(
    short_tmp: Path, daemon_clock: MockClock, database: str | None
) -> None:
    async with hive_on_trio_clock(short_tmp, database) as hive:
        await hive.spawn("alice")
        await hive.spawn("bob")
        alice = await connect_agent(hive.config.paths, "alice")
        bob = await connect_agent(hive.config.paths, "bob")
        try:
            rid = (await alice.request({"cmd": "remind", "body": "x", "in_seconds": 60}))[
                "reminder"
            ]["id"]
            keep = (await alice.request({"cmd": "remind", "body": "kept", "in_seconds": 120}))[
                "reminder"
            ]["id"]
            # Only its owner (or the manager, or the operator) may cancel it.
            refused = await bob.request({"cmd": "cancel_loose_end", "kind": "reminder", "id": rid})
            assert refused == {"ok": False, "error": f"reminder {rid} belongs to alice, not bob"}
            ok = await alice.request({"cmd": "cancel_loose_end", "kind": "reminder", "id": rid})
            assert ok["ok"]
            again = await alice.request({"cmd": "cancel_loose_end", "kind": "reminder", "id": rid})
            assert again == {"ok": False, "error": f"no reminder with id {rid}"}
            got = await alice.call(Recv(wait_seconds=MAX_RECV_WAIT_SECONDS, max=8))
        finally:
            await alice.aclose()
            await bob.aclose()
        # The first message to arrive is the kept one, two minutes in: the cancelled never came.
        assert [m.body for m in got.messages] == ["kept"]  # type: ignore[attr-defined]
        assert [r.id for r in await hive.reminders.list(include_sent=True)] == [keep]


async def test_a_reminder_due_while_down_fires_once_at_start(
    short_tmp: Path, daemon_clock: MockClock, database: str | None
) -> None:
    config = Config(
        paths=make_paths(short_tmp),
        wall_clock=TrioWallClock(),
        backend="external",
        database=database,
    )
    async with open_hive(config) as hive:
        await hive.spawn("alice")
        early = await hive.reminders.remind("alice", "while down", in_seconds=60)
        later = await hive.reminders.remind("alice", "later", in_seconds=3600)
    await trio.sleep(120)  # the daemon is down for two (virtual) minutes
    for run in range(2):
        async with open_hive(config) as hive:
            alice = await connect_agent(config.paths, "alice", role="harness")
            try:
                got = await alice.call(Recv(wait_seconds=5 if run == 0 else 0.5, max=32))
            finally:
                await alice.aclose()
            bodies = [m.body for m in got.messages]  # type: ignore[attr-defined]
            assert bodies == (["while down"] if run == 0 else [])
            assert (await hive.reminders.get(early.id)).sent_at is not None
            assert (await hive.reminders.get(later.id)).sent_at is None


async def test_the_cap_and_the_time_arguments(hive: Hive, connect: Connect) -> None:
    alice = await connect("alice")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"cmd": "remind", "body": "x"}, "give exactly one of in_seconds and at"),
        (
            {"cmd": "remind", "body": "x", "in_seconds": 1, "at": 1e9},
            "give exactly one of in_seconds and at",
        ),
        ({"cmd": "remind", "body": " ", "in_seconds": 1}, "message body is empty"),
        ({"cmd": "remind", "body": "x", "in_seconds": -1}, "in_seconds"),
        ({"cmd": "remind", "body": "x", "in_seconds": 1, "file_path": "/etc/passwd"}, "/state/"),
        ({"cmd": "remind", "body": "x", "in_seconds": 1, "file_path": "/state/../x"}, "'..'"),
    ]
    for request, error in cases:
        reply = await alice.request(request)
        assert not reply["ok"] and error in reply["error"], (request, reply)
    for i in range(MAX_PENDING_REMINDERS):
        assert (await alice.request({"cmd": "remind", "body": f"r{i}", "in_seconds": 3600}))["ok"]
    full = await alice.request({"cmd": "remind", "body": "one more", "in_seconds": 3600})
    assert not full["ok"]
    assert f"already has {MAX_PENDING_REMINDERS} pending reminders" in full["error"]
    # Another agent's count is its own.
    bob = await connect("bob")
    assert (await bob.request({"cmd": "remind", "body": "b", "in_seconds": 3600}))["ok"]
    loose = await alice.request({"cmd": "get_loose_ends"})
    assert len(loose["reminders"]) == MAX_PENDING_REMINDERS
    assert {r["agent"] for r in loose["reminders"]} == {"alice"}
    assert all(e["kind"] == "reminder" and e["age_seconds"] >= 0 for e in loose["items"])
    manager = await connect("manager")
    everyone = await manager.request({"cmd": "get_loose_ends"})
    assert len(everyone["reminders"]) == MAX_PENDING_REMINDERS + 1


async def test_large_and_file_path_bodies_spill_to_the_state_dir(
    hive: Hive, connect: Connect
) -> None:
    alice = await connect("alice", role="harness")
    big = "x" * (REMINDER_SPILL_CHARS + 1)
    r1 = (await alice.request({"cmd": "remind", "body": big, "in_seconds": 0}))["reminder"]
    r2 = (
        await alice.request(
            {
                "cmd": "remind",
                "body": "short but filed",
                "in_seconds": 0,
                "file_path": "/state/notes/todo.md",
            }
        )
    )["reminder"]
    got = await alice.call(Recv(wait_seconds=10, max=2))
    messages = got.messages  # type: ignore[attr-defined]
    while len(messages) < 2:
        messages += (await alice.call(Recv(wait_seconds=10, max=2))).messages  # type: ignore[attr-defined]
    bodies = {m.body for m in messages}
    state = hive.config.paths.agent_state_dir("alice")
    assert bodies == {
        f"Reminder #{r1['id']}: its text ({len(big)} characters) is in "
        f"/state/reminders/reminder-{r1['id']}.txt",
        f"Reminder #{r2['id']}: its text (15 characters) is in /state/notes/todo.md",
    }
    assert (state / "reminders" / f"reminder-{r1['id']}.txt").read_text() == big
    assert (state / "notes" / "todo.md").read_text() == "short but filed"


async def test_a_failed_spill_is_retried_then_waits_for_the_operator(
    short_tmp: Path, daemon_clock: MockClock, database: str | None
) -> None:
    async with hive_on_trio_clock(short_tmp, database) as hive:
        await hive.spawn("alice")
        state = hive.config.paths.agent_state_dir("alice")
        outside = short_tmp / "outside"
        outside.mkdir()
        # The agent plants a symlink where the body would go: never followed, the write fails.
        os.symlink(outside, state / "reminders")
        info = await hive.reminders.remind("alice", "y" * (REMINDER_SPILL_CHARS + 10), in_seconds=1)

        # Every attempt fails; the backoff between them runs on trio's clock.
        async def given_up() -> bool:
            return (await hive.reminders.get(info.id)).failed

        await wait_until(given_up, limit=3600, interval=1)  # virtual seconds
        failed = await hive.reminders.get(info.id)
        assert failed.attempt_count == MAX_REMINDER_ATTEMPTS and failed.sent_at is None
        assert failed.last_error is not None and "reminders" in failed.last_error
        assert list(outside.iterdir()) == []
        assert await hive.broker.unread("alice") == 0
        # It stays given up: no more attempts, longer than the longest backoff (virtual time;
        # every virtual second costs real time here, as the daemon's timers tick).
        await trio.sleep(REMINDER_RETRY_BACKOFF.limit + 1)
        assert (await hive.reminders.get(info.id)).attempt_count == MAX_REMINDER_ATTEMPTS
        # The operator clears the cause and retries from the host socket.
        (state / "reminders").unlink()
        async with await Client.connect(hive.config.paths.host_socket, hello_role="cli") as op:
            listed = await op.request({"cmd": "reminders"})
            assert [r["failed"] for r in listed["reminders"]] == [True]
            retried = await op.request({"cmd": "retry_reminder", "id": info.id})
            assert retried["ok"] and retried["reminder"]["attempt_count"] == 0
        alice = await connect_agent(hive.config.paths, "alice")
        try:
            got = await alice.call(Recv(wait_seconds=10))
        finally:
            await alice.aclose()
        [message] = got.messages  # type: ignore[attr-defined]
        assert message.from_ == "reminder" and f"reminder-{info.id}.txt" in message.body
        assert (await hive.reminders.get(info.id)).sent_at is not None


async def test_the_operator_cancels_a_reminder(hive: Hive, connect: Connect) -> None:
    alice = await connect("alice")
    rid = (await alice.request({"cmd": "remind", "body": "x", "in_seconds": 3600}))["reminder"][
        "id"
    ]
    async with await Client.connect(hive.config.paths.host_socket, hello_role="cli") as op:
        assert (await op.request({"cmd": "cancel_reminder", "id": rid}))["ok"]
        assert (await op.request({"cmd": "reminders"}))["reminders"] == []
        refused = await op.request({"cmd": "retry_reminder", "id": rid})
        assert refused == {
            "ok": False,
            "protocol": PROTOCOL_VERSION,
            "error": f"no reminder with id {rid}",
        }


def test_check_remind_rules() -> None:
    assert check_remind("b", 10, None, None, now=100.0) == 110.0
    assert check_remind("b", None, 50.0, None, now=100.0) == 100.0  # past: at once
    assert check_remind("b", None, 500.0, "/state/a/b.txt", now=100.0) == 500.0
    with pytest.raises(RequestRefused, match="within"):
        check_remind("b", None, 1e12, None, now=100.0)
    assert state_relative("/state/a/b.txt") == ("a", "b.txt")
    for bad in ("/state/", "/state//x", "/state/./x", "state/x", "/state/x\n", "/statex/y"):
        with pytest.raises(RequestRefused):
            state_relative(bad)
