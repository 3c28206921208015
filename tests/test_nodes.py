"""Nodes: the rules (status from a heartbeat, placement, the notifications' format) and
daemons sharing one PostgreSQL store as nodes of one hive."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import psycopg
import trio
from hypothesis import given
from hypothesis import strategies as st

from hyperhive.client import Client
from hyperhive.kinds import NodeStatus
from hyperhive.names import InvalidNodeName, node_name_from_host, parse_node_name
from hyperhive.nodes import decode_note, encode_note, lock_key, node_status, place
from hyperhive.protocol import Pause, Spawn
from tests.harness.fixtures import eventually
from tests.multinode import node_process, running_nodes, spawn_on


def test_a_node_is_down_once_silent_for_longer_than_the_limit() -> None:
    assert node_status(100.0, None, 110.0, 10.0) == NodeStatus.UP
    assert node_status(100.0, None, 110.5, 10.0) == NodeStatus.DOWN
    assert node_status(100.0, 100.0, 500.0, 10.0) == NodeStatus.STOPPED
    # A stop from before its last start is no stop.
    assert node_status(100.0, 50.0, 101.0, 10.0) == NodeStatus.UP


def test_a_new_agent_goes_to_the_node_up_with_the_fewest_agents() -> None:
    assert place({"a": 3, "b": 1, "c": 1}, ["a", "b", "c"]) == "b"
    assert place({"a": 3, "b": 1}, ["a", "c"]) == "c"  # c has none
    assert place({"a": 0, "b": 0}, ["a"]) == "a"  # b is not up
    assert place({}, []) is None


@given(st.text(max_size=80))
def test_node_names_are_host_labels(raw: str) -> None:
    try:
        name = parse_node_name(raw)
    except InvalidNodeName:
        return
    assert 1 <= len(name) <= 32 and not name.startswith("-") and not name.endswith("-")
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")


@given(st.text(max_size=300))
def test_the_default_node_name_is_always_valid(host: str) -> None:
    assert parse_node_name(node_name_from_host(host))


def test_a_notification_carries_its_topic_origin_and_ids() -> None:
    payload = encode_note("wake", "node-a", {"agent": "bob"})
    assert decode_note(payload) == ("wake", "node-a", {"agent": "bob"})
    assert decode_note("not json") is None
    assert decode_note('{"t": 1}') is None
    assert lock_key("a") != lock_key("b")
    assert all(-(2**31) <= half < 2**31 for half in lock_key("node-with-a-long-name"))


async def test_nodes_share_one_hive_with_one_manager(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery
) -> None:
    async with running_nodes(short_tmp, pg_url, ["na", "nb"], nursery) as nodes:
        a, b = nodes["na"], nodes["nb"]
        async with await a.host() as host:
            await host.call(Spawn("alice"))
        listed = await b.call({"cmd": "list"})
        names = {agent["name"] for agent in listed["agents"]}
        assert {"manager", "alice"} <= names
        with psycopg.connect(pg_url) as conn:
            placed = dict(conn.execute("SELECT name, node FROM agents").fetchall())
            known = {row[0] for row in conn.execute("SELECT name FROM nodes").fetchall()}
        # The first node created the manager; nb serves no manager socket of its own.
        assert placed["manager"] == "na"
        assert a.paths.agent_socket("manager").exists()
        assert not b.paths.agent_socket("manager").exists()
        assert known == {"na", "nb"}


async def test_a_second_daemon_as_the_same_node_is_refused(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery
) -> None:
    async with running_nodes(short_tmp, pg_url, ["na"], nursery):
        twin = node_process(short_tmp / "twin", "na", pg_url)
        with trio.fail_after(30):
            done = await trio.run_process(
                twin.command(),
                env=twin.env,
                capture_stdout=True,
                stderr=subprocess.STDOUT,
                check=False,
            )
        assert done.returncode != 0
        assert b"another daemon is already running as this node" in done.stdout


async def test_a_notification_that_is_not_ours_ends_nothing(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery
) -> None:
    # Anything on the channel (another program, a newer node) is logged and dropped; the
    # node goes on and still follows the rows another node tells it about.
    async with running_nodes(short_tmp, pg_url, ["na", "nb"], nursery) as nodes:
        na, nb = nodes["na"], nodes["nb"]
        await spawn_on(na, "alice")
        garbage = (
            "not json",
            "[1, 2]",
            '{"t": "agents", "from": "x", "names": 5}',
            "[" * 5000,
            '{"t": "agents", "from": "x", "names": ["nobody"]}',
        )
        with psycopg.connect(pg_url, autocommit=True) as conn:
            for payload in garbage:
                conn.execute("SELECT pg_notify('hyperhive', %s)", (payload,))
        # Notifications arrive in commit order: na reads nb's pause after the garbage.
        async with await nb.host() as host:
            await host.call(Pause(["alice"], reason="night"))

        async def paused_on_na() -> bool:
            listed = await na.call({"cmd": "list"})
            return any(a["name"] == "alice" and a.get("paused_at") for a in listed["agents"])

        await eventually(paused_on_na, within=10, what="na shows nb's pause")
        assert na.proc is not None and na.proc.returncode is None
        assert not any("Traceback" in line for line in na.output)
        assert any("not one of ours" in line for line in na.output)


async def test_another_nodes_agent_shows_what_its_node_knows_of_it(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery
) -> None:
    # bob runs on nb: its model file, its claude login and its harness are there; na's
    # listing shows them as nb sees them, not the defaults of files na does not have.
    async with running_nodes(short_tmp, pg_url, ["na", "nb"], nursery) as nodes:
        na, nb = nodes["na"], nodes["nb"]
        await spawn_on(nb, "bob")
        # bob's harness writes its model file (its own state dir, on nb).
        nb.paths.model_file("bob").write_text("opus\n")

        async def bob_on_na() -> dict[str, Any]:
            listed = await na.call({"cmd": "list"})
            [bob] = [a for a in listed["agents"] if a["name"] == "bob"]
            return bob

        async def seen(model: str, harness: bool) -> bool:
            bob = await bob_on_na()
            return bob["model"] == model and bob["harness_connected"] is harness

        async with await Client.connect(nb.paths.agent_socket("bob"), hello_role="harness"):
            await eventually(lambda: seen("opus", True), within=15, what="bob's facts on na")
        await eventually(lambda: seen("opus", False), within=15, what="bob's harness gone")
        assert not na.paths.model_file("bob").exists()
