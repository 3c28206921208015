"""End to end: the real claude calls ``remind`` and ``get_loose_ends`` through the MCP server
against the scripted API; at the due time the reminder starts the agent's next turn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from hyperhive.hive import Hive

from .fixtures import make_harness, operator_send, result_text, running, tool_results, tool_uses
from .mock_anthropic import MockAnthropic, RecordedRequest, text, tool_use

#: Far enough ahead that the turn setting it (three API calls) ends well before.
DELAY = 20


def last_tool_result(req: RecordedRequest) -> str | None:
    """The text of the tool result the request answers, if it answers one (its newest user
    message then holds no text of its own)."""
    if req.last_user_text or not req.tool_results:
        return None
    return result_text(req.tool_results[-1])


async def test_remind_then_the_reminder_starts_a_turn_at_its_time(
    hive: Hive,
    mock_api: MockAnthropic,
    claude_bin: Path,
    short_tmp: Path,
    nursery: trio.Nursery,
) -> None:
    paths = hive.config.paths
    await hive.spawn("alice")

    def reply(req: RecordedRequest) -> object:
        answered = last_tool_result(req)
        if answered is None:
            if "set a reminder" in req.last_user_text:
                return tool_use(
                    "mcp__hyperhive__remind", {"body": "check the oven", "in_seconds": DELAY}
                )
            return text("oven checked")
        if answered.startswith("reminder #") and " set, due in " in answered:
            return tool_use("mcp__hyperhive__get_loose_ends", {})
        return text("noted")

    mock_api.default = reply  # type: ignore[assignment]
    alice = make_harness("alice", mock_api, claude_bin, short_tmp, paths.agent_socket("alice"))
    async with running(alice, nursery):
        sent = await operator_send(paths.host_socket, "alice", "please set a reminder")
        end = await alice.wait_for("turn_end", lambda p: p["id"] == sent)
        assert end[0]["payload"]["ok"] is True, alice.failure_help()
        [reminder] = await hive.reminders.list()
        assert (reminder.agent, reminder.body) == ("alice", "check the oven")

        events = alice.events()
        calls = {u["name"]: u for u in tool_uses(events)}
        assert calls["mcp__hyperhive__remind"]["input"] == {
            "body": "check the oven",
            "in_seconds": DELAY,
        }
        results: dict[str, Any] = {r["tool_use_id"]: r for r in tool_results(events)}
        listed = results[calls["mcp__hyperhive__get_loose_ends"]["id"]]
        assert not listed.get("is_error"), listed
        # Listed before it fired, with its id and how far ahead it is.
        assert f"reminder #{reminder.id} for alice: 'check the oven', due in " in result_text(
            listed
        )

        start = (
            await alice.wait_for("turn_start", lambda p: p["from"] == "reminder", within=DELAY + 40)
        )[0]["payload"]
        assert start["body"] == "check the oven"
        fired = await hive.reminders.get(reminder.id)
        assert fired.sent_at is not None and fired.sent_at >= reminder.due_at
        end = await alice.wait_for("turn_end", lambda p: p["id"] == start["id"])
        assert end[0]["payload"]["ok"] is True, alice.failure_help()
        turn = [r for r in mock_api.main_requests if "check the oven" in r.last_user_text]
        assert turn and "from reminder" in turn[0].last_user_text
        assert await hive.reminders.list() == []
