"""The scheduling MCP tools, over stdio with the MCP SDK's client against a real daemon."""

from __future__ import annotations

import time

from hyperhive.client import Client
from hyperhive.supervisor import Hive

from .test_mcp_tools import call, inbox, mcp_session, result_text


async def _host(hive: Hive, payload: dict[str, object]) -> dict[str, object]:
    async with await Client.connect(hive.config.paths.host_socket, hello_role="cli") as client:
        return await client.request(payload)


async def test_schedule_tools_request_list_fire_cancel(hive: Hive) -> None:
    await hive.spawn("alice")
    await hive.spawn("bob")
    async with mcp_session(hive.config.paths.agent_socket("alice")) as mcp:
        requested = await call(
            mcp,
            "request_schedule",
            targets=["alice"],
            body="water the plants",
            first_at=time.time() + 3600,
            interval_seconds=86400,
            description="daily",
        )
        assert "schedule alice" in requested and "pending" in requested
        [approval] = await hive.approvals.list(pending_only=True)
        decided = await _host(hive, {"cmd": "approve", "id": approval.id})
        assert decided["ok"], decided
        listed = await call(mcp, "list_schedules")
        [info] = await hive.schedules.list()
        assert f"schedule #{info.id} (alice): every 24h00m to alice" in listed
        assert "water the plants" in listed
        assert "schedules delivering to it: #" in await call(mcp, "get_agent_meta")

        fired = await call(mcp, "fire_schedule_now", id=info.id)
        assert "fired 1x" in fired
        # alice heard the decision on her request, then the fire.
        got = [(m.from_, m.body.split(" ")[0]) for m in await inbox(hive, "alice")]
        assert got == [("system", "approval_resolved"), ("scheduler", "water")]

        edited = await call(mcp, "edit_schedule", id=info.id, description="every day")
        assert edited.endswith("— every day\n  body: water the plants")
        # The operator approved alice as the target: alice cannot add bob herself.
        refused = await mcp.call_tool("edit_schedule", {"id": info.id, "targets_add": ["bob"]})
        assert refused.is_error is True and "cannot add bob" in result_text(refused)
        added = await _host(hive, {"cmd": "edit_schedule", "id": info.id, "targets_add": ["bob"]})
        assert added["ok"], added

    async with mcp_session(hive.config.paths.agent_socket("bob")) as bob:
        # bob is a target, so it sees the schedule, but alice owns it and it also targets
        # alice, who is not below bob.
        assert f"schedule #{info.id}" in await call(bob, "list_schedules")
        refused = await bob.call_tool("cancel_schedule", {"id": info.id})
        assert refused.is_error is True and "outside your subtree" in result_text(refused)

    async with mcp_session(hive.config.paths.agent_socket("alice")) as mcp:
        assert "to alice, bob" in await call(mcp, "list_schedules")
        dropped = await call(mcp, "cancel_schedule", id=info.id, targets=["alice"])
        assert "to bob" in dropped and "ended" not in dropped
        ended = await call(mcp, "cancel_schedule", id=info.id)
        assert "ended" in ended
        assert await call(mcp, "list_schedules") == "(no schedules)"
