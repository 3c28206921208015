"""``/api/state`` serves cached agent views: no agent's file is read per request, and the
views follow model changes, state changes and harness connections."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from hyperhive.agent_views import AgentFacts
from hyperhive.client import Client
from hyperhive.protocol import Destroy, HostSend, Remind, SetModel, Spawn
from hyperhive.supervisor import Daemon, Hive
from tests.conftest import wait_until

from .conftest import base_url, http, session_cookie

NAMES = ("alice", "bob", "carol", "dave")


async def _state(inproc: Daemon) -> dict[str, Any]:
    response = await http(
        base_url(inproc), "GET", "/api/state", headers={"cookie": session_cookie(inproc)}
    )
    assert response.status == 200, response.body
    state: dict[str, Any] = response.json()
    return state


def _agents(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in state["agents"]}


@contextmanager
def _counting(hive: Hive, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[str], list[str]]]:
    """Count the seam's fact reads, and every stat of an agent's model, UI socket or login,
    made for requests and events: the periodic read of every agent's facts (every 2 s; its
    own test below) is held off meanwhile, so a slow step cannot count it."""
    reads: list[str] = []
    stats: list[str] = []
    read = hive.views.read_facts

    def counted(name: str) -> AgentFacts:
        reads.append(name)
        return read(name)

    paths = hive.config.paths
    watched = {
        os.fspath(p)
        for name in (*NAMES, "manager")
        for p in (paths.model_file(name), paths.ui_socket(name), paths.credentials_file(name))
    }
    real_stat, real_lstat = os.stat, os.lstat

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if os.fspath(path) in watched:
            stats.append(os.fspath(path))
        return real_stat(path, *args, **kwargs)

    def lstat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if os.fspath(path) in watched:
            stats.append(os.fspath(path))
        return real_lstat(path, *args, **kwargs)

    async def no_periodic_read() -> None:
        pass

    monkeypatch.setattr(hive.views, "refresh_all", no_periodic_read)
    monkeypatch.setattr(hive.views, "read_facts", counted)
    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "lstat", lstat)
    yield reads, stats


async def test_state_reads_no_agent_file_per_request_and_follows_changes(
    hive: Hive, inproc: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = hive.config.paths
    async with await Client.connect(paths.host_socket) as host:
        for name in NAMES:
            await host.call(Spawn(name))
        first = _agents(await _state(inproc))
        assert set(first) == {"manager", *NAMES}
        assert {a["model"] for a in first.values()} == {"haiku"}

        with _counting(hive, monkeypatch) as (reads, stats):
            for _ in range(3):
                again = _agents(await _state(inproc))
            assert again == first
            assert reads == [] and stats == []

            # The operator sets a model: that agent's facts, and only its, are read again.
            await host.call(SetModel("alice", "opus"))
            after_model = _agents(await _state(inproc))
            assert after_model["alice"]["model"] == "opus"
            assert {n: a for n, a in after_model.items() if n != "alice"} == {
                n: a for n, a in first.items() if n != "alice"
            }
            assert reads == ["alice"]

            # A destroy takes bob off the list; nobody's files are read for it.
            reads.clear()
            await host.call(Destroy("bob"))
            after_destroy = _agents(await _state(inproc))
            assert "bob" not in after_destroy and after_destroy["alice"]["model"] == "opus"
            assert reads == []

        # carol's harness connects (its own socket, its own hello).
        carol = await Client.connect(paths.agent_socket("carol"), hello_role="harness")
        async with carol:
            await wait_until(lambda: _connected(inproc, "carol", True), limit=10, interval=0.01)
        await wait_until(lambda: _connected(inproc, "carol", False), limit=10, interval=0.01)


async def _connected(inproc: Daemon, name: str, connected: bool) -> bool:
    return bool(_agents(await _state(inproc))[name]["harness_connected"] == connected)


async def test_changes_nobody_announces_show_after_the_periodic_read(
    hive: Hive, inproc: Daemon
) -> None:
    """The harness's UI socket appears, and its UI writes the model file, without telling
    the daemon: the next periodic read of the facts shows both (and announces the model)."""
    paths = hive.config.paths
    async with await Client.connect(paths.host_socket) as host:
        await host.call(Spawn("dave"))
    assert _agents(await _state(inproc))["dave"]["ui_url"] is None
    seq = hive.events.seq
    # What the harness does inside the container: bind its UI socket, rewrite its model file.
    ui: Path = paths.ui_socket("dave")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(os.fspath(ui))
        tmp = paths.model_file("dave").with_name(".model.tmp")
        tmp.write_text("sonnet\n")
        tmp.replace(paths.model_file("dave"))

        async def shown() -> bool:
            dave = _agents(await _state(inproc))["dave"]
            return bool(dave["ui_url"] == "/agent/dave/" and dave["model"] == "sonnet")

        await wait_until(shown, limit=15, interval=0.05)
        announced = [e for e in hive.events.since(seq) or [] if e.kind == "model_changed"]
        assert [(e.data["name"], e.data["model"]) for e in announced] == [("dave", "sonnet")]


async def test_kept_snapshot_entries_follow_unread_and_extras(hive: Hive, inproc: Daemon) -> None:
    """Each agent's entry is kept with the count and extras it was made with: a message or
    a reminder changes exactly that agent's entry, and the encoded snapshot says what the
    views say."""
    paths = hive.config.paths
    async with await Client.connect(paths.host_socket) as host:
        for name in ("alice", "bob"):
            await host.call(Spawn(name))
        before = _agents(await _state(inproc))
        await host.call(HostSend("alice", "hello"))
    after_send = _agents(await _state(inproc))
    assert after_send["alice"]["unread"] == before["alice"]["unread"] + 1
    assert after_send["bob"] == before["bob"]
    async with await Client.connect(paths.agent_socket("bob")) as bob:
        await bob.call(Remind("stretch", in_seconds=3600))
    after_remind = _agents(await _state(inproc))
    assert after_remind["bob"]["pending_reminders"] == before["bob"]["pending_reminders"] + 1
    assert after_remind["alice"] == after_send["alice"]
    views = await hive.views.wire(
        await hive.broker.unread_by_recipient(), await hive.agent_extras()
    )
    assert {a["name"]: a for a in views} == after_remind
