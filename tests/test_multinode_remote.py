"""Operations on another node's agents: the operator on node A restarts, stops, starts,
reads the logs of, sets the model of and destroys an agent node B serves; B carries each
out (``node_commands``) and A returns B's answer. When B is down the command is refused
(after the timeout, then at once), a command B never took is not carried out when it
returns, and A's dashboard sends the operator to B's for the agent's UI."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from hyperhive.client import Client
from hyperhive.config import NODE_DOWN_SECONDS
from hyperhive.errors import ClientError, ConnectionLost
from hyperhive.nodes import NodeInfo
from hyperhive.protocol import (
    Destroy,
    HostSend,
    Kill,
    Logs,
    LogsReply,
    Pause,
    Restart,
    SetModel,
    Spawn,
    Start,
)
from hyperhive.remote import (
    COMMAND_EXPIRED,
    forwarded_agent,
    gave_up,
    node_refusal,
    sql_give_up,
    sql_insert,
    sql_interrupted,
    sql_outcome,
    sql_take,
)
from hyperhive.store import BROKER_MIGRATIONS, open_database
from hyperhive.web._auth import CSRF_HEADER
from tests.conftest import DaemonProcess, process_alive, wait_until
from tests.dashboard.conftest import http, login
from tests.multinode import node_name, running_nodes, spawn_on

FAKE = Path(__file__).resolve().parent / "payloads" / "fake_harness.py"
#: Agents run as real processes (a stand-in harness that connects and waits).
PROCESS = ["--backend", "process", "--harness-command", f"{sys.executable} {FAKE}"]


@asynccontextmanager
async def process_nodes(
    base: Path, pg_url: str, names: list[str], nursery: trio.Nursery, args: Sequence[str] = ()
) -> AsyncIterator[dict[str, DaemonProcess]]:
    """:func:`running_nodes` with agents as processes; those still running at the end
    (agents outlive their daemons) are killed."""
    try:
        async with running_nodes(base, pg_url, names, nursery, args=[*PROCESS, *args]) as nodes:
            yield nodes
    finally:
        with psycopg.connect(pg_url) as conn:
            pids = [r[0] for r in conn.execute("SELECT pid FROM agents WHERE pid IS NOT NULL")]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


async def agent(node: DaemonProcess, name: str) -> dict[str, Any] | None:
    listed = await node.call({"cmd": "list"})
    return next((a for a in listed["agents"] if a["name"] == name), None)


async def running_pid(node: DaemonProcess, name: str, *, connected: bool = True) -> int | None:
    """The agent's pid as ``node`` lists it, once it runs (with its harness connected)."""
    info = await agent(node, name)
    if info is None or info["state"] != "running" or info["transient"] is not None:
        return None
    if connected and not info["harness_connected"]:
        return None
    pid = info["pid"]
    return pid if isinstance(pid, int) and process_alive(pid) else None


async def wait_running(
    node: DaemonProcess, name: str, *, other_than: int | None = None, connected: bool = True
) -> int:
    found: list[int] = []

    async def runs() -> bool:
        pid = await running_pid(node, name, connected=connected)
        if pid is None or pid == other_than:
            return False
        found.append(pid)
        return True

    await wait_until(runs, limit=30, interval=0.05)
    return found[-1]


def row(pg_url: str, sql: str, *args: Any) -> Any:
    with psycopg.connect(pg_url) as conn:
        return conn.execute(sql, args).fetchone()


async def cli(node: DaemonProcess, *args: str) -> trio.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYPERHIVE_")}
    argv = [sys.executable, "-m", "hyperhive", *args, "--run-dir", str(node.paths.run_dir)]
    return await trio.run_process(
        argv, env=env, capture_stdout=True, capture_stderr=True, check=False
    )


async def spawn_running(node: DaemonProcess, name: str, pg_url: str) -> int:
    """``name`` spawned on ``node``, placed there in the database; its pid once running."""
    await spawn_on(node, name)
    assert row(pg_url, "SELECT node FROM agents WHERE name = %s", name)[0] == node_name(node)
    return await wait_running(node, name)


def test_only_requests_that_need_the_agents_node_are_forwarded() -> None:
    assert forwarded_agent(Restart("bob")) == "bob"
    assert forwarded_agent(Logs("bob", lines=5)) == "bob"
    assert forwarded_agent(Destroy("bob", purge=True)) == "bob"
    # The database is every node's: these are carried out where they are asked.
    assert forwarded_agent(Pause(names=["bob"], reason="r")) is None
    assert forwarded_agent(HostSend(to="bob", body="hi")) is None


def test_a_command_for_a_node_not_up_is_refused_at_once_saying_why() -> None:
    def info(heartbeat: float, stopped: float | None = None) -> NodeInfo:
        return NodeInfo("nb", "host", 1, 0.0, heartbeat, stopped, None)

    assert node_refusal("bob", "nb", info(100.0), 105.0) is None
    down = node_refusal("bob", "nb", info(100.0), 142.0)
    assert down is not None
    assert down.startswith("bob runs on node nb, which is down (last seen 42 s ago); ")
    stopped = node_refusal("bob", "nb", info(100.0, stopped=100.0), 101.0)
    assert stopped is not None and "which is stopped" in stopped
    never = node_refusal("bob", "nb", None, 1.0)
    assert never is not None and "has never run" in never
    assert gave_up("nb", info(100.0), 101.0, 30.0, taken=False).startswith(
        "node nb did not answer within 30 s"
    )
    assert gave_up("nb", info(100.0), 130.0, 30.0, taken=False).startswith("node nb went down")


async def test_a_node_takes_only_its_open_commands_that_have_not_expired(
    short_tmp: Path,
) -> None:
    async with open_database(
        short_tmp / "b.sqlite", synchronous="FULL", migrations=BROKER_MIGRATIONS
    ) as db:

        def setup(conn: Any) -> list[int]:
            return [
                sql_insert(conn, "nb", "bob", "na", "{}", 0.0, 10.0),  # expired at 10
                sql_insert(conn, "nb", "bob", "na", "{}", 0.0, 50.0),
                sql_insert(conn, "nc", "carl", "na", "{}", 0.0, 50.0),  # another node's
                sql_insert(conn, "nb", "bob", "na", "{}", 0.0, 50.0),  # the origin gives up
            ]

        old, fresh, other, given_up = await db.transaction(setup)
        assert await db.transaction(lambda conn: sql_give_up(conn, given_up, 5.0))
        taken, expired = await db.transaction(lambda conn: sql_take(conn, "nb", 20.0))
        assert [c.id for c in taken] == [fresh]
        assert expired == [(old, "na")]
        for command_id in (old, given_up):
            outcome, _ = await db.transaction(lambda conn, i=command_id: sql_outcome(conn, i))
            assert outcome is not None and outcome.error == COMMAND_EXPIRED
        # Taken once: a second look takes nothing, and the origin cannot give it up now.
        assert await db.transaction(lambda conn: sql_take(conn, "nb", 21.0)) == ([], [])
        assert not await db.transaction(lambda conn: sql_give_up(conn, fresh, 22.0))
        # Its node stopped before finishing it: at its next start it is done, with why.
        done = await db.transaction(lambda conn: sql_interrupted(conn, "nb", 30.0, "stopped"))
        assert done == [(fresh, "na")]
        assert (await db.transaction(lambda conn: sql_outcome(conn, other)))[0] is None


async def test_lifecycle_logs_model_and_destroy_from_another_node(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery
) -> None:
    async with process_nodes(short_tmp, pg_url, ["na", "nb"], nursery) as nodes:
        a, b = nodes["na"], nodes["nb"]
        pid = await spawn_running(b, "bob", pg_url)
        assert not a.paths.agent_socket("bob").exists()

        # restart from A's CLI: B stops bob's payload and starts a new one.
        done = await cli(a, "restart", "bob")
        assert done.returncode == 0, done.stderr
        new_pid = await wait_running(b, "bob", other_than=pid)
        assert not process_alive(pid)
        # A shows what B did (B's row, announced to A).
        await wait_until(lambda: _pid_is(a, "bob", new_pid), limit=10)

        async with await a.host() as host:
            await host.call(Kill("bob"))
            stopped = await agent(b, "bob")
            assert stopped is not None and stopped["state"] == "stopped", stopped
            assert not process_alive(new_pid)

            await host.call(Start("bob"))
            started = await wait_running(b, "bob", other_than=new_pid)

            # Logs of bob come from B's file: the stand-in harness printed its pid there.
            async def logged() -> bool:
                logs = await host.call(Logs("bob", lines=50))
                assert isinstance(logs, LogsReply)
                return f"fake harness bob pid {started}" in logs.lines

            await wait_until(logged, limit=10, interval=0.05)

            await host.call(SetModel("bob", "opus"))
            assert b.paths.model_file("bob").read_text() == "opus\n"
            assert not a.paths.model_file("bob").exists()

            await host.call(Destroy("bob"))
            assert await agent(b, "bob") is None  # listed no more: a tombstone
            assert row(pg_url, "SELECT state FROM agents WHERE name = 'bob'")[0] == "destroyed"
            assert not process_alive(started)
            assert b.paths.agent_dir("bob").exists()  # a tombstone keeps its state on B

            # B's own refusal comes back as it is.
            with pytest.raises(ClientError, match=r"^bob is destroyed; revive it first$"):
                await host.call(Start("bob"))

            await host.call(Destroy("bob", purge=True))
            assert await agent(b, "bob") is None
            assert not b.paths.agent_dir("bob").exists()
        assert row(pg_url, "SELECT COUNT(*) FROM agents WHERE name = 'bob'")[0] == 0

        # Every command was taken and answered by B, in order; nothing is left open.
        with psycopg.connect(pg_url) as conn:
            rows = conn.execute(
                "SELECT node, origin, request_json, taken_at, done_at, error "
                "FROM node_commands ORDER BY id"
            ).fetchall()
        assert {(r[0], r[1]) for r in rows} == {("nb", "na")}
        assert all(r[3] is not None and r[4] is not None for r in rows)
        verbs = [json.loads(r[2])["cmd"] for r in rows]
        assert [v for v in verbs if v != "logs"] == [
            "restart", "kill", "start", "set_model", "destroy", "start", "destroy",
        ]  # fmt: skip
        assert [r[5] for r in rows if r[5] is not None] == ["bob is destroyed; revive it first"]

        # A's CLI reads B's logs too (a second agent, alive).
        carol = await spawn_running(b, "carol", pg_url)
        shown = await cli(a, "logs", "carol")
        assert shown.returncode == 0, shown.stderr
        assert f"fake harness carol pid {carol}".encode() in shown.stdout

        # A's dashboard acts on B's agent the same way (its actions are host requests).
        base, cookie = await login(a)
        state = await http(base, "GET", "/api/state", headers={"cookie": cookie})
        restarted = await http(
            base,
            "POST",
            "/api/restart",
            headers={
                "cookie": cookie,
                "content-type": "application/json",
                CSRF_HEADER: state.json()["csrf"],
            },
            body=json.dumps({"cmd": "restart", "name": "carol"}).encode(),
        )
        assert restarted.status == 200, restarted
        await wait_running(b, "carol", other_than=carol)
        assert not process_alive(carol)

        # The agent's UI from A's dashboard: A's agent list links it (B's does not: the
        # stand-in harness serves no UI)...
        async def linked() -> bool:
            info = await agent(a, "carol")
            return info is not None and info["ui_url"] == "/agent/carol/"

        await wait_until(linked, limit=10, interval=0.1)
        assert (await agent(b, "carol") or {}).get("ui_url", "missing") is None
        # ... to a redirect to B's dashboard, where its socket is.
        page = await http(base, "GET", "/agent/carol/", headers={"cookie": cookie})
        b_base = (b.dashboard_login or "").partition("/login")[0]
        assert page.status == 303, page
        assert page.header("location") == f"{b_base}/agent/carol/"
        api = await http(base, "GET", "/agent/carol/api/state", headers={"cookie": cookie})
        assert api.status == 409 and "runs on node nb" in api.json()["error"]
        # The agent UI of A's own agent is still A's to serve (not redirected).
        # (The stand-in harness serves no UI: the dashboard says so itself.)
        own = await http(base, "GET", "/agent/manager/", headers={"cookie": cookie})
        assert own.status == 502 and b"manager's UI is not up" in own.body, own
        # B's dashboard serves carol's page itself, behind B's own login.
        _, b_cookie = await login(b)
        there = await http(b_base, "GET", "/agent/carol/", headers={"cookie": b_cookie})
        assert there.status == 502 and b"carol's UI is not up" in there.body, there


async def _pid_is(node: DaemonProcess, name: str, pid: int) -> bool:
    info = await agent(node, name)
    return info is not None and info["pid"] == pid


TIMEOUT = 4.0


async def test_a_command_for_a_node_that_died_is_refused_and_never_carried_out_later(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery
) -> None:
    args = ["--remote-command-seconds", str(TIMEOUT)]
    async with process_nodes(short_tmp, pg_url, ["na", "nb", "nc"], nursery, args) as nodes:
        a, b, c = nodes["na"], nodes["nb"], nodes["nc"]
        pid = await spawn_running(b, "bob", pg_url)
        await b.kill()  # bob's payload outlives its node's daemon
        assert process_alive(pid)

        # Right away B still looks up: A's command waits for its deadline, then is refused.
        async with await a.host() as host:
            started = time.monotonic()
            with pytest.raises(ClientError) as refused:
                await host.call(Restart("bob"))
            elapsed = time.monotonic() - started
        refusal = str(refused.value)
        # (Under load B's last heartbeat may be old enough to show it down by then.)
        assert refusal.startswith(("node nb did not answer within 4 s", "node nb went down")), (
            refusal
        )
        assert refusal.endswith("the command was not carried out"), refusal
        assert TIMEOUT - 0.5 <= elapsed < TIMEOUT + 3, elapsed
        first = row(pg_url, "SELECT error, taken_at FROM node_commands WHERE origin = 'na'")
        assert first == ("expired", None)

        # C asks too, and dies while it waits: its row stays open, nobody gives it up.
        async def ask_then_die() -> None:
            async with await c.host() as host:
                try:
                    await host.call(Restart("bob"))
                except ConnectionLost:
                    return
            raise AssertionError("C answered although it was killed")

        nursery.start_soon(ask_then_die)

        async def c_asked() -> bool:
            return row(pg_url, "SELECT COUNT(*) FROM node_commands WHERE origin = 'nc'")[0] == 1

        await wait_until(c_asked, limit=10, interval=0.05)
        await c.kill()
        expires_at = row(pg_url, "SELECT expires_at FROM node_commands WHERE origin = 'nc'")[0]

        # Once B shows down, A refuses at once and says so.
        async def b_down() -> bool:
            seen = row(pg_url, "SELECT heartbeat_at FROM nodes WHERE name = 'nb'")[0]
            return bool(time.time() - seen > NODE_DOWN_SECONDS + 0.5)

        await wait_until(b_down, limit=30, interval=0.2)
        async with await a.host() as host:
            started = time.monotonic()
            with pytest.raises(ClientError) as refused:
                await host.call(Restart("bob"))
            assert time.monotonic() - started < 2
        refusal = str(refused.value)
        assert refusal.startswith("bob runs on node nb, which is down (last seen "), refusal

        # A's dashboard says the same instead of sending the operator to a dead dashboard.
        base, cookie = await login(a)
        page = await http(base, "GET", "/agent/bob/", headers={"cookie": cookie})
        assert page.status == 503 and b"which is down" in page.body, page

        # B comes back long after C's command expired: it never carries it out.
        assert time.time() > expires_at
        await b.start(nursery)

        async def c_command_done() -> bool:
            return (
                row(pg_url, "SELECT done_at FROM node_commands WHERE origin = 'nc'")[0] is not None
            )

        await wait_until(c_command_done, limit=10, interval=0.05)
        assert row(pg_url, "SELECT error, taken_at FROM node_commands WHERE origin = 'nc'") == (
            "expired",
            None,
        )
        # bob was re-adopted, not restarted: the same process (the stand-in harness does
        # not connect again to its node's new socket).
        assert await wait_running(b, "bob", connected=False) == pid
        assert process_alive(pid)

        # And B, back, carries out what A asks now.
        async with await a.host() as host:
            await host.call(Restart("bob"))
        assert await wait_running(b, "bob", other_than=pid) != pid
        assert not process_alive(pid)


async def test_an_agent_request_never_becomes_a_command_to_another_node(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery
) -> None:
    async with running_nodes(short_tmp, pg_url, ["na", "nb"], nursery) as nodes:
        a, b = nodes["na"], nodes["nb"]
        async with await b.host() as host:
            await host.call(Spawn("bob", node="nb"))
        # The manager (on A) asks to restart bob (on B) through its own socket.
        async with await Client.open(a.paths.agent_socket("manager"), role="cli") as manager:
            reply = await manager.request({"cmd": "restart", "name": "bob"})
        assert not reply["ok"]
        assert "bob runs on node nb" in reply["error"], reply
        assert row(pg_url, "SELECT COUNT(*) FROM node_commands")[0] == 0


async def test_a_node_stopping_while_it_carries_out_a_command_says_so_at_once(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery
) -> None:
    # A payload that ignores SIGTERM: stopping it takes the whole stop grace (10 s).
    stubborn = ["--harness-command", "sh -c 'trap \"\" TERM; exec sleep 300'"]
    async with process_nodes(short_tmp, pg_url, ["na", "nb"], nursery, stubborn) as nodes:
        a, b = nodes["na"], nodes["nb"]
        async with await b.host() as host:
            await host.call(Spawn("bob", node="nb"))
        await wait_running(b, "bob", connected=False)
        outcome: list[str] = []
        stopped_at: list[float] = []

        async def restart_from_a() -> None:
            async with await a.host() as host:
                try:
                    await host.call(Restart("bob"))
                except ClientError as exc:
                    outcome.append(str(exc))
                    stopped_at.append(time.monotonic())

        nursery.start_soon(restart_from_a)

        async def taken() -> bool:
            found = row(pg_url, "SELECT taken_at, done_at FROM node_commands")
            return found is not None and found[0] is not None and found[1] is None

        await wait_until(taken, limit=10, interval=0.02)
        asked_stop = time.monotonic()
        await b.stop()  # SIGTERM, while B's runner waits for bob to stop
        await wait_until(lambda: _done(outcome), limit=10, interval=0.02)
        assert outcome == ["node nb stopped before it finished the command"]
        # Well before A's deadline (30 s): B said so as it stopped.
        assert stopped_at[0] - asked_stop < 10
        assert row(pg_url, "SELECT error FROM node_commands")[0] == outcome[0]


async def _done(outcome: list[str]) -> bool:
    return bool(outcome)
