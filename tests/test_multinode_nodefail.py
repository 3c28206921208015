"""Nodes failing and racing: each node's status shown, messages to a down node's agents kept
until it returns, its agents re-adopted then, two operators deciding one approval on two
nodes, ``kill -9`` of a node in a burst of cross-node sends (real daemons, one PostgreSQL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import trio

from tests.multinode import running_nodes


async def test_two_operators_approving_on_two_nodes_one_wins(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery
) -> None:
    async with running_nodes(short_tmp, pg_url, ["na", "nb"], nursery) as nodes:
        a, b = nodes["na"], nodes["nb"]
        for round_ in range(4):
            name = f"twice{round_}"
            asked = await a.call({"cmd": "request_spawn", "name": name})
            assert asked["ok"], asked
            approval = asked["approval"]["id"]
            replies: dict[str, dict[str, Any]] = {}

            async def approve(node: str, approval: int, out: dict[str, Any]) -> None:
                out[node] = await nodes[node].call({"cmd": "approve", "id": approval})

            async with trio.open_nursery() as both:  # both operators at once
                both.start_soon(approve, "na", approval, replies)
                both.start_soon(approve, "nb", approval, replies)
            won = [node for node, reply in replies.items() if reply["ok"]]
            assert len(won) == 1, replies
            (winner,) = won
            loser = "nb" if winner == "na" else "na"
            assert replies[winner]["approval"]["status"] == "approved"
            refusal = replies[loser]["error"]
            assert f"approval {approval}" in refusal, refusal
            assert f"on node {winner}" in refusal, refusal
            # One decision, recorded once; the manager heard of it once.
            for node in (a, b):
                listed = await node.call({"cmd": "approvals", "include_resolved": True})
                mine = [x for x in listed["approvals"] if x["id"] == approval]
                assert [x["status"] for x in mine] == ["approved"]
            with psycopg.connect(pg_url) as conn:
                told = conn.execute(
                    "SELECT COUNT(*) FROM messages WHERE recipient = 'manager' "
                    "AND sender = 'system' AND body LIKE %s",
                    (f'approval_resolved %"id": {approval},%',),
                ).fetchone()
                journal = conn.execute("SELECT COUNT(*) FROM operations").fetchone()
                decided = conn.execute(
                    "SELECT decided_node FROM approvals WHERE id = %s", (approval,)
                ).fetchone()
            assert told is not None and told[0] == 1
            assert journal is not None and journal[0] == 0
            assert decided is not None and decided[0] == winner
            listed = await b.call({"cmd": "list"})
            assert [x["name"] for x in listed["agents"]].count(name) == 1
