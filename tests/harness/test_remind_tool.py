"""The ``remind`` MCP tool and reminders in ``get_loose_ends`` / ``cancel_loose_end``, through
the real MCP server on the agent's socket."""

from __future__ import annotations

from hyperhive.hive import Hive

from .test_mcp_tools import call, mcp_session, result_text


async def test_remind_list_and_cancel_through_the_tools(hive: Hive) -> None:
    await hive.spawn("alice")
    async with mcp_session(hive.config.paths.agent_socket("alice")) as mcp:
        set_ = await call(mcp, "remind", body="stretch", in_seconds=600)
        [reminder] = await hive.reminders.list()
        assert (reminder.agent, reminder.body) == ("alice", "stretch")
        assert set_.startswith(f"reminder #{reminder.id} set, due in ")
        loose = await call(mcp, "get_loose_ends")
        assert f"reminder #{reminder.id} for alice: 'stretch', due in " in loose

        both = await mcp.call_tool("remind", {"body": "x", "in_seconds": 5, "at": 1e9})
        assert both.is_error is True
        assert "give exactly one of in_seconds and at" in result_text(both)
        outside = await mcp.call_tool(
            "remind", {"body": "x", "in_seconds": 5, "file_path": "/etc/cron.d/x"}
        )
        assert outside.is_error is True and "/state/" in result_text(outside)

        cancelled = await call(mcp, "cancel_loose_end", kind="reminder", id=reminder.id)
        assert cancelled == f"cancelled reminder #{reminder.id}"
        assert await hive.reminders.list() == []
        assert await call(mcp, "get_loose_ends") == "(no loose ends)"
        again = await mcp.call_tool("cancel_loose_end", {"kind": "reminder", "id": reminder.id})
        assert again.is_error is True and "no reminder with id" in result_text(again)
