"""A lead's tools: its MCP server (over stdio, the MCP SDK's client, a real daemon) offers the
lead verbs once its applied agent.toml says ``lead = true``, and they reach the daemon,
which keeps them inside the lead's subtree."""

from __future__ import annotations

from typing import Any

from hyperhive.client import Client
from hyperhive.config import PROTOCOL_VERSION
from hyperhive.supervisor import Hive
from hyperhive_harness.prompt import AGENT_TOOLS, LEAD_TOOLS, allowed_tools
from tests.conftest import propose_config

from .test_mcp_tools import call, mcp_session, result_text


async def host(hive: Hive, payload: dict[str, Any]) -> dict[str, Any]:
    async with await Client.connect(hive.config.paths.host_socket, hello_role="cli") as op:
        return await op.request(payload)


async def make_lead(hive: Hive, name: str) -> None:
    """The manager proposes ``lead = true`` on its socket; the operator approves."""
    sha = propose_config(hive.config.paths, name, "lead = true\n")
    manager_socket = hive.config.paths.agent_socket("manager")
    async with await Client.connect(manager_socket, hello_role="mcp") as manager:
        asked = await manager.request(
            {"cmd": "request_apply_commit", "agent": name, "commit_ref": sha}
        )
    assert asked["ok"], asked
    approved = await host(hive, {"cmd": "approve", "id": asked["approval"]["id"]})
    assert approved["approval"]["status"] == "approved", approved


async def test_a_lead_gets_the_lead_tools_for_its_subtree(hive: Hive) -> None:
    for name in ("lead", "kid", "sib"):
        await hive.spawn(name)
    assert await host(hive, {"cmd": "set_parent", "child": "kid", "parent": "lead"}) == {
        "ok": True,
        "protocol": PROTOCOL_VERSION,
    }
    lead_socket = hive.config.paths.agent_socket("lead")

    # Not a lead yet: the plain agent tools.
    async with mcp_session(lead_socket) as mcp:
        assert [t.name for t in (await mcp.list_tools()).tools] == list(AGENT_TOOLS)

    await make_lead(hive, "lead")
    async with await Client.open(lead_socket, role="cli") as client:
        assert client.role == "lead"
    assert allowed_tools("lead")[: len(LEAD_TOOLS)] == [f"mcp__hyperhive__{t}" for t in LEAD_TOOLS]

    async with mcp_session(lead_socket) as mcp:
        assert [t.name for t in (await mcp.list_tools()).tools] == list(LEAD_TOOLS)
        assert "a lead" in (mcp.instructions or "")
        # Its child passes the subtree check (the external backend then starts nothing).
        restarted = await mcp.call_tool("restart", {"name": "kid"})
        assert restarted.is_error is True
        assert "cannot restart kid: the external backend starts nothing" in result_text(restarted)
        refused = await mcp.call_tool("restart", {"name": "sib"})
        assert refused.is_error is True
        assert "sib is not in your subtree" in result_text(refused)
        requested = await call(mcp, "request_spawn", name="newb", description="a helper")
        assert "spawn newb" in requested and "pending" in requested

    [pending] = await hive.approvals.list(pending_only=True)
    assert (pending.agent, pending.description) == ("newb", "a helper")
    assert (await host(hive, {"cmd": "approve", "id": pending.id}))["ok"]
    assert hive.registry.parent("newb") == "lead"
    async with mcp_session(lead_socket) as mcp:
        sent = await call(mcp, "send", to="*:lead", body="team: stand-up in 5")
        assert sent.startswith("broadcast to 2 agent(s): #")

    # The plain agent below it keeps the plain tools.
    async with mcp_session(hive.config.paths.agent_socket("kid")) as mcp:
        assert [t.name for t in (await mcp.list_tools()).tools] == list(AGENT_TOOLS)
