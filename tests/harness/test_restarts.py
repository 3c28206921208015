"""Nothing lost, nothing done twice: ``kill -9`` of the harness mid-turn, and a daemon restart
while a turn runs (its ack fails, is retried after reconnecting, and no second turn runs)."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from hyperhive.supervisor import Hive

from ..conftest import DaemonProcess
from .fixtures import (
    eventually,
    make_harness,
    message,
    operator_send,
    pid_alive,
    running,
    wait_acked,
)
from .mock_anthropic import MockAnthropic, RecordedRequest, error, hold, text


async def test_kill_9_mid_turn_turns_the_same_message_again_once(
    hive: Hive,
    mock_api: MockAnthropic,
    claude_bin: Path,
    short_tmp: Path,
    nursery: trio.Nursery,
) -> None:
    paths = hive.config.paths
    socket = paths.agent_socket("alice")
    await hive.spawn("alice")
    gate = hold()
    mock_api.script(gate)
    alice = make_harness("alice", mock_api, claude_bin, short_tmp, socket)
    await alice.start(nursery)
    sent = await operator_send(paths.host_socket, "alice", "important-task")
    with trio.fail_after(30):
        await gate.arrived.wait()  # mid-turn: claude is waiting for the API
    pid_file = alice.state_dir / "hyperhive-claude.pid"
    orphan = int(pid_file.read_text().split()[0])
    assert pid_alive(orphan)
    first = await alice.wait_for("turn_start", lambda p: p["id"] == sent)
    assert first[0]["payload"]["redelivered"] is False
    await alice.kill()
    assert (await message(socket, sent)).acked_at is None

    async with running(alice, nursery):
        # The restarted harness ends the orphaned claude of its previous life ...
        await eventually(lambda: not pid_alive(orphan), what="the orphaned claude to end")
        # ... and turns the same message again, flagged as redelivered.
        again = await alice.wait_for("turn_start", lambda p: p["id"] == sent, count=2)
        assert again[1]["payload"]["redelivered"] is True
        end = await alice.wait_for("turn_end", lambda p: p["id"] == sent)
        assert end[0]["payload"]["ok"] is True
        prompt = mock_api.main_requests[-1].last_user_text
        assert "delivered before" in prompt and "important-task" in prompt
        acked_at = (await wait_acked(socket, sent)).acked_at
        gate.release()

        # An acked message never comes back, and its ack is not redone.
        marker = await operator_send(paths.host_socket, "alice", "marker-task")
        await alice.wait_for("turn_end", lambda p: p["id"] == marker)
        starts = [e["payload"]["id"] for e in alice.events("turn_start")]
        assert starts == [sent, sent, marker]
        assert len([e for e in alice.events("turn_end") if e["payload"]["id"] == sent]) == 1
        assert (await message(socket, sent)).acked_at == acked_at


async def test_message_sent_while_the_harness_restarts_is_not_stuck(
    hive: Hive,
    mock_api: MockAnthropic,
    claude_bin: Path,
    short_tmp: Path,
    nursery: trio.Nursery,
) -> None:
    """A harness stopped while parked in ``recv``: the daemon cancels that ``recv`` when the
    connection closes, so the next message is not taken for nobody; the new harness gets it."""
    paths = hive.config.paths
    socket = paths.agent_socket("alice")
    await hive.spawn("alice")
    # The first life parks a 60 s recv; it outlives the process in the daemon.
    alice = make_harness("alice", mock_api, claude_bin, short_tmp, socket, HYPERHIVE_RECV_WAIT="60")
    async with running(alice, nursery):
        await alice.wait_for("status_changed", lambda p: p["status"] == "online")
        await eventually(lambda: hive.broker.parked("alice") == 1, what="a parked recv")
    # 1 while the daemon keeps the dead connection's recv parked (0 once it stops doing so).
    stale = hive.broker.parked("alice")
    alice.env["HYPERHIVE_RECV_WAIT"] = "2"
    async with running(alice, nursery):
        await alice.wait_for("status_changed", lambda p: p["status"] == "online", count=2)
        # Both parked, the stale one first: it is woken first and takes the message.
        await eventually(
            lambda: hive.broker.parked("alice") == stale + 1, what="the new harness parked"
        )
        sent = await operator_send(paths.host_socket, "alice", "during-restart")
        end = await alice.wait_for("turn_end", lambda p: p["id"] == sent, within=20)
        assert end[0]["payload"]["ok"] is True
        await wait_acked(socket, sent)
        starts = [e["payload"]["id"] for e in alice.events("turn_start")]
        assert starts == [sent]


async def test_daemon_restart_mid_turn_retries_the_ack_without_a_second_turn(
    daemon: DaemonProcess,
    mock_api: MockAnthropic,
    claude_bin: Path,
    short_tmp: Path,
    nursery: trio.Nursery,
) -> None:
    paths = daemon.paths
    socket = paths.agent_socket("alice")
    assert (await daemon.call({"cmd": "spawn", "name": "alice"}))["ok"]
    gate = hold()
    mock_api.script(gate)
    alice = make_harness(
        "alice",
        mock_api,
        claude_bin,
        short_tmp,
        socket,
        HYPERHIVE_RECONNECT_BACKOFF="0.2,0.4,0.8",
    )
    async with running(alice, nursery):
        sent = await operator_send(paths.host_socket, "alice", "survive-task")
        with trio.fail_after(30):
            await gate.arrived.wait()
        assert await daemon.stop() == 0
        gate.release()  # the turn finishes while the daemon is down; the ack cannot be sent
        end = await alice.wait_for("turn_end", lambda p: p["id"] == sent)
        assert end[0]["payload"]["ok"] is True
        await alice.wait_for("status_changed", lambda p: p["status"] == "disconnected")
        notes = await alice.wait_for("note", lambda p: "reconnecting in" in p["text"])
        assert "daemon unreachable" in notes[0]["payload"]["text"]

        await daemon.start(nursery)
        await alice.wait_for("note", lambda p: p["text"].startswith("reconnected"))
        # The hello put the unacked message back in the inbox; the retried ack still takes
        # it (the work is done), so claude does not run on it again.
        await wait_acked(socket, sent)  # the ack retried after reconnecting
        assert [e["payload"]["id"] for e in alice.events("turn_start")].count(sent) == 1

        # Idle in recv when the daemon goes away: reconnects and serves the next message.
        assert await daemon.stop() == 0
        await alice.wait_for("status_changed", lambda p: p["status"] == "disconnected", count=2)
        await daemon.start(nursery)
        await alice.wait_for("status_changed", lambda p: p["status"] == "online", count=3)
        nxt = await operator_send(paths.host_socket, "alice", "after-restart")
        end = await alice.wait_for("turn_end", lambda p: p["id"] == nxt)
        assert end[0]["payload"]["ok"] is True
        starts = [e["payload"]["id"] for e in alice.events("turn_start")]
        assert starts == [sent, nxt]


async def test_the_new_session_after_a_given_up_message_survives_a_harness_restart(
    hive: Hive,
    mock_api: MockAnthropic,
    claude_bin: Path,
    short_tmp: Path,
    nursery: trio.Nursery,
) -> None:
    paths = hive.config.paths
    socket = paths.agent_socket("alice")
    poison = "refused-prompt-91c2"

    def refuse_the_poison(req: RecordedRequest) -> object:
        if poison in json.dumps(req.messages):
            return error(400, "invalid_request_error", "mock refuses this prompt")
        return text("ok")

    mock_api.default = refuse_the_poison  # type: ignore[assignment]
    await hive.spawn("alice")
    alice = make_harness("alice", mock_api, claude_bin, short_tmp, socket)
    await alice.start(nursery)
    sent = await operator_send(paths.host_socket, "alice", f"do {poison}")
    await alice.wait_for("turn_end", lambda p: p["id"] == sent, count=2)
    await wait_acked(socket, sent)
    # Killed after giving up, before any other turn: the new session must not be forgotten.
    await alice.kill()
    assert (alice.state_dir / "hyperhive-new-session.json").exists()

    async with running(alice, nursery):
        before = len(mock_api.main_requests)
        nxt = await operator_send(paths.host_socket, "alice", "after-the-restart")
        end = await alice.wait_for("turn_end", lambda p: p["id"] == nxt)
        assert end[0]["payload"]["ok"] is True, alice.failure_help()
        start = next(e for e in alice.events("turn_start") if e["payload"]["id"] == nxt)
        assert start["payload"]["new_session"] is True
        assert f"message #{sent}" in start["payload"]["new_session_reason"]
        requests = mock_api.main_requests[before:]
        assert requests and all(poison not in json.dumps(r.messages) for r in requests)
        assert "previous claude session was ended" in requests[0].last_user_text
        assert not (alice.state_dir / "hyperhive-new-session.json").exists()
