"""The harness's event log on a real sqlite file (persistence through hyperhive.store.Database,
reload, no-store mode, fan-out), the view folded from its events, the model file and the
operator's commands."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from hyperhive_harness.commands import Commands
from hyperhive_harness.event_log import KINDS, EventLog, open_event_log
from hyperhive_harness.model import InvalidModel, ModelFile
from hyperhive_harness.stream import TurnState
from hyperhive_harness.view import Status, View

from .fixtures import ROOT


def rows(db: Path) -> list[tuple[int, str, dict[str, object]]]:
    conn = sqlite3.connect(db)
    try:
        return [
            (r[0], r[1], json.loads(r[2]))
            for r in conn.execute("SELECT id, kind, payload_json FROM events ORDER BY id")
        ]
    finally:
        conn.close()


async def test_events_are_persisted_and_reloaded_after_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "events.sqlite"
    async with open_event_log(db) as bus:
        assert bus.stored and bus.store_error is None
        bus.publish("turn_start", **{"from": "bob"}, body="hi", unread=2)
        bus.publish("stream", value={"type": "assistant", "n": 1})
        bus.note("a note")
        await bus.flush()
        assert [(k, p) for _, k, p in rows(db)] == [
            ("turn_start", {"from": "bob", "body": "hi", "unread": 2}),
            ("stream", {"value": {"type": "assistant", "n": 1}}),
            ("note", {"text": "a note"}),
        ]
    async with open_event_log(db) as bus:
        assert bus.seq == 3
        assert [e.kind for e in bus.history()] == ["turn_start", "stream", "note"]
        event = bus.publish("turn_end", ok=True, note="")
        assert event.seq == 4
    assert [r[0] for r in rows(db)] == [1, 2, 3, 4]


async def test_events_published_before_closing_are_written(tmp_path: Path) -> None:
    db = tmp_path / "events.sqlite"
    async with open_event_log(db) as bus:
        for i in range(50):
            bus.note(f"n{i}")
        # no flush: leaving the context must write the last batch
    assert len(rows(db)) == 50


async def test_unopenable_db_means_no_store_mode_with_a_note(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    db = blocker / "events.sqlite"
    async with open_event_log(db) as bus:
        receive = bus.subscribe()
        assert not bus.stored and bus.store_error
        notes = [e for e in bus.history() if e.kind == "note"]
        assert len(notes) == 1 and "no-store mode" in notes[0].data["text"]
        assert str(db) in notes[0].data["text"]
        bus.publish("turn_start", **{"from": "op"}, body="x", unread=0)
        event = receive.receive_nowait()
        assert event.kind == "turn_start"
        await bus.flush()  # does not hang without a store
        assert bus.status()["events_stored"] is False
    assert not db.exists()


async def test_a_slow_subscriber_is_dropped_and_the_publisher_never_blocks(
    tmp_path: Path,
) -> None:
    bus = EventLog(queue_size=16)
    slow = bus.subscribe()
    fast = bus.subscribe()
    got: list[int] = []

    async def drain() -> None:
        async for event in fast:
            got.append(event.seq)
            if event.seq == 100:
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        for _ in range(100):
            bus.note("x")  # synchronous: it cannot block
            await trio.lowlevel.checkpoint()
    assert got == list(range(1, 101))
    assert bus.dropped_subscribers == 1
    received = []
    with pytest.raises(trio.EndOfChannel):
        while True:
            received.append((await slow.receive()).seq)
    assert received == list(range(1, 17))  # what fitted before it was cut off


async def test_ring_since(tmp_path: Path) -> None:
    bus = EventLog(history_size=5)
    for i in range(8):
        bus.note(str(i))
    assert [e.seq for e in bus.since(5) or []] == [6, 7, 8]
    assert bus.since(8) == []
    assert bus.since(2) is None  # 3 already left the ring
    assert [e.seq for e in bus.history(2)] == [7, 8]


async def test_model_file_is_read_afresh(tmp_path: Path) -> None:
    model_file = tmp_path / "state" / "hyperhive-model"
    events = EventLog()
    model = ModelFile(model_file, events)
    assert model.read() == "haiku"
    assert model.write(" sonnet ") == "sonnet"
    assert model_file.read_text() == "sonnet\n"
    assert events.history()[-1].kind == "model_changed"
    assert events.history()[-1].data == {"model": "sonnet"}
    model_file.write_text("opus\n")  # e.g. `hyperhive set-model` on the host
    assert model.read() == "opus"
    assert events.history()[-1].data == {"model": "opus"}
    seq = events.seq
    assert model.read() == "opus" and events.seq == seq  # no event when nothing changed
    model_file.write_text("")
    assert model.read() == "haiku"
    for bad in ("", "two words", "x" * 101, "bad\x00"):
        with pytest.raises(InvalidModel):
            model.write(bad)


async def test_status_and_turn_state_events_only_on_change(tmp_path: Path) -> None:
    clock = iter(range(100, 200))
    events = EventLog(clock=lambda: float(next(clock)))
    view = View(events, ModelFile(tmp_path / "m", events))
    view.set_status(Status.ONLINE)
    view.set_status(Status.ONLINE)
    view.set_turn_state(TurnState.THINKING)
    view.set_turn_state(TurnState.THINKING)
    view.set_turn_state(TurnState.IDLE)
    kinds = [(e.kind, e.data) for e in events.history()]
    assert kinds[0] == ("status_changed", {"status": "online"})
    assert [k for k, _ in kinds] == ["status_changed", "turn_state_changed", "turn_state_changed"]
    assert kinds[1][1]["state"] == "thinking" and kinds[2][1]["state"] == "idle"
    assert kinds[2][1]["since"] > kinds[1][1]["since"]
    assert view.status is Status.ONLINE and view.turn_state is TurnState.IDLE
    assert view.turn_state_since == kinds[2][1]["since"]


async def test_the_view_is_folded_from_the_events(tmp_path: Path) -> None:
    events = EventLog()
    view = View(events, ModelFile(tmp_path / "m", events))
    start = events.publish("turn_start", **{"from": "bob"}, id=7, body="hi", model="opus")
    assert view.current_turn == {"id": 7, "from": "bob", "started_at": start.ts, "model": "opus"}
    view.set_token_usage(1200, None)
    view.set_token_usage(None, 3400, 0.25)
    assert (view.ctx, view.cost, view.cost_usd) == (1200, 3400, 0.25)
    assert events.history()[-1].data == {"ctx": 1200, "cost": 3400, "cost_usd": 0.25}
    events.publish("turn_end", ok=True, note="", id=7, duration_seconds=1.5)
    snap = view.snapshot()
    assert snap["current_turn"] is None and snap["last_turn_seconds"] == 1.5
    assert snap["model"] == "haiku" and snap["ctx"] == 1200


async def test_commands_new_session_is_taken_once_and_retry_ends_a_wait(tmp_path: Path) -> None:
    events = EventLog()
    commands = Commands(events, ModelFile(tmp_path / "m", events))
    assert not commands.take_new_session()
    commands.request_new_session()
    assert commands.new_session_pending is True
    assert "new session" in events.history()[-1].data["text"]
    assert commands.take_new_session()
    assert not commands.take_new_session()
    assert commands.cancel() is False  # no turn runs: nothing to cancel, nothing noted
    assert events.history()[-1].kind == "note" and events.seq == 1
    assert commands.set_model("opus") == "opus"
    assert [e.kind for e in events.history()[-2:]] == ["model_changed", "note"]

    commands.retry_now()  # before arming: forgotten
    commands.arm_retry()
    async with trio.open_nursery() as nursery:
        woke: list[bool] = []

        async def wait() -> None:
            woke.append(await commands.wait_retry(60))

        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        assert woke == []
        commands.retry_now()
    assert woke == [True]
    commands.arm_retry()
    assert await commands.wait_retry(0.01) is False


@pytest.mark.serial  # asserts a latency: runs alone (docs/development.md)
async def test_persists_at_least_5000_events_per_second(tmp_path: Path) -> None:
    db = tmp_path / "events.sqlite"
    n = 20_000
    value = {"type": "assistant", "message": {"content": [{"type": "text", "text": "x" * 200}]}}
    async with open_event_log(db) as bus:
        started = time.perf_counter()
        for i in range(n):
            bus.publish("stream", value=value)
            if i % 500 == 0:
                await trio.lowlevel.checkpoint()
        await bus.flush()
        elapsed = time.perf_counter() - started
    assert len(rows(db)) == n
    rate = n / elapsed
    assert rate >= 5000, f"persisted only {rate:.0f} events/s"


def test_the_page_listens_to_every_kind_the_log_publishes() -> None:
    # Each SSE frame's type is its kind, and EventSource delivers only the types listened to.
    page = (ROOT / "hyperhive_harness" / "static" / "index.html").read_text()
    listed = re.search(r"const KINDS = \[(.*?)\];", page, flags=re.S)
    assert listed is not None
    assert set(re.findall(r'"([a-z_]+)"', listed.group(1))) == KINDS


async def test_an_events_db_from_before_the_schema_version_is_taken_over(tmp_path: Path) -> None:
    db = tmp_path / "deep" / "events.sqlite"
    db.parent.mkdir()
    conn = sqlite3.connect(db)
    conn.execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, ts REAL NOT NULL, "
        "kind TEXT NOT NULL, payload_json TEXT NOT NULL)"
    )
    old = time.time() - 15 * 24 * 3600
    conn.executemany(
        "INSERT INTO events VALUES (?, ?, ?, ?)",
        [
            (1, old, "stream", "{}"),
            (2, old, "note", '{"text": "kept"}'),
            (7, time.time(), "note", "{"),
        ],
    )
    conn.commit()
    conn.close()
    async with open_event_log(db) as log:
        assert log.stored and log.seq == 7
        # Old stream rows are pruned at open; an unreadable payload is shown, not fatal.
        assert [(e.seq, e.data) for e in log.history()] == [
            (2, {"text": "kept"}),
            (7, {"unreadable": "{"}),
        ]
        assert log.publish("note", text="new").seq == 8
    conn = sqlite3.connect(db)
    try:
        ids = [r[0] for r in conn.execute("SELECT id FROM events ORDER BY id")]
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    finally:
        conn.close()
    assert ids == [2, 7, 8]
