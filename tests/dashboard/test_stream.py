"""Acceptance 6: a reconnect with ``Last-Event-ID`` replays exactly what was missed, or resyncs.

Over raw HTTP (h11 on trio sockets) first, then with the page itself: its stream is cut,
messages are sent while it is away, and they appear once it reconnects on its own.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from hyperhive.events import EventHub
from hyperhive.supervisor import Daemon, Hive
from hyperhive.web import Dashboard
from tests.conftest import wait_until

from .conftest import UI, EventStream, SSEvent

NoCookie = 401


async def _no_subscribers(hive: Hive) -> bool:
    return hive.events.statistics().subscribers == 0


async def _probes(stream: EventStream, count: int, after: int | None) -> list[SSEvent]:
    """The next ``count`` probe frames; the daemon's own events may come between them (it
    publishes some on its own), each numbered after the one before, starting at ``after``
    + 1 (None: wherever the stream starts): no frame is skipped and none comes twice."""
    probes: list[SSEvent] = []
    while len(probes) < count:
        frame = await stream.next()
        assert after is None or frame.id == after + 1, (frame, after)
        after = frame.id
        if frame.kind == "probe":
            probes.append(frame)
    return probes


async def test_reconnect_replays_exactly_the_missed_events(hive: Hive, inproc: Daemon) -> None:
    refused = await EventStream.open(inproc, cookie=False)
    assert refused.status == NoCookie
    await refused.aclose()

    first = await EventStream.open(inproc)
    try:
        assert first.status == 200
        published = [hive.events.publish("probe", n=n).seq for n in range(3)]
        seen = await _probes(first, 3, None)
        assert [e.id for e in seen] == published
        assert [(e.kind, e.data["n"], e.data["seq"]) for e in seen] == [
            ("probe", n, seq) for n, seq in zip(range(3), published, strict=True)
        ]
    finally:
        await first.aclose()

    missed = [hive.events.publish("probe", n=n).seq for n in range(3, 13)]
    second = await EventStream.open(inproc, last_event_id=seen[-1].id)
    try:
        # The replay starts right after the last event seen (whatever the daemon published
        # meanwhile comes in its place) and brings each missed one once.
        got = await _probes(second, len(missed), seen[-1].id)
        assert [e.id for e in got] == missed
        assert [e.data["n"] for e in got] == list(range(3, 13))
        # Nothing extra was replayed: the next probe is one published from now on.
        fresh = hive.events.publish("probe", n=99)
        [after] = await _probes(second, 1, missed[-1])
        assert (after.id, after.data["n"]) == (fresh.seq, 99)
    finally:
        await second.aclose()


async def test_a_closed_stream_drops_its_subscription(hive: Hive, inproc: Daemon) -> None:
    stream = await EventStream.open(inproc)
    hive.events.publish("probe", n=0)
    await stream.next()
    assert hive.events.statistics().subscribers == 1
    await stream.aclose()

    async def gone() -> bool:
        # A write after the close is what tells the daemon (the heartbeat, when idle).
        hive.events.publish("probe", n=1)
        return await _no_subscribers(hive)

    await wait_until(gone, interval=0.05)


async def test_a_gap_older_than_the_ring_gets_one_resync(hive: Hive, inproc: Daemon) -> None:
    async def measured() -> bool:
        # The daemon publishes its first disk measurement of its own (set, then published,
        # in one step): after it, only this test's probes are published.
        return hive.disk_usage is not None

    await wait_until(measured, limit=30)
    hive.events._ring = deque(hive.events._ring, maxlen=4)
    last = hive.events.seq
    for n in range(6):
        hive.events.publish("probe", n=n)
    stream = await EventStream.open(inproc, last_event_id=last)
    resync = await stream.next()
    assert (resync.kind, resync.id, resync.data) == ("resync", hive.events.seq, {"seq": last + 6})
    fresh = hive.events.publish("probe", n=6)
    assert (await stream.next()).id == fresh.seq  # then live events, nothing replayed
    await stream.aclose()

    # Within the ring it still replays; garbage as Last-Event-ID resyncs.
    recent = await EventStream.open(inproc, last_event_id=hive.events.seq - 3)
    assert [(await recent.next()).data["n"] for _ in range(3)] == [4, 5, 6]
    await recent.aclose()
    garbage = await EventStream.open(inproc, last_event_id="yesterday")
    assert (await garbage.next()).kind == "resync"
    fresh = hive.events.publish("probe", n=7)
    assert (await garbage.next()).id == fresh.seq  # and the stream goes on
    await garbage.aclose()


async def test_an_id_from_before_a_restart_gets_a_resync(hive: Hive, inproc: Daemon) -> None:
    # seq starts again at 0 in a new daemon: an id ahead of it is from an older run, and
    # the events it would wait for to pass that id are exactly the ones it must not miss.
    hive.events.publish("probe", n=0)
    stream = await EventStream.open(inproc, last_event_id=hive.events.seq + 500)
    resync = await stream.next()
    assert (resync.kind, resync.data) == ("resync", {"seq": hive.events.seq})
    fresh = hive.events.publish("probe", n=1)
    assert (await stream.next()).id == fresh.seq
    await stream.aclose()


def test_event_hub_since_boundaries() -> None:
    hub = EventHub(ring_size=3)
    assert hub.since(0) == []
    for n in range(5):
        hub.publish("probe", n=n)
    assert hub.since(5) == [] and hub.since(9) == []
    assert [e.seq for e in hub.since(2)] == [3, 4, 5]
    assert hub.since(1) is None  # seq 2 already left the ring


async def test_the_page_catches_up_after_its_stream_is_cut(hive: Hive, ui: UI) -> None:
    await hive.spawn("alice")
    requests: list[tuple[str, str | None]] = []

    def watch(page: Page) -> None:
        def seen(request: Any) -> None:
            if "/api/" in request.url:
                requests.append((request.url, request.all_headers().get("last-event-id")))

        # The new agent made the page take a snapshot; once it shows, nothing is pending.
        expect(page.get_by_role("article", name="agent alice")).to_be_visible()
        expect(page.locator("#conn")).to_have_text("● live")
        page.on("request", seen)

    await ui(watch)
    before = hive.events.seq
    # Make the page's subscription fall behind: more events at once than its queue holds.
    # The hub cuts it off; the page gets what was queued, then its stream ends.
    assert hive.events.statistics().subscribers == 1
    n = 0
    while hive.events.statistics().subscribers:
        hive.events.publish("probe", n=n)
        n += 1
    assert hive.events.statistics().dropped_subscribers == 1

    def reconnecting(page: Page) -> None:
        expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting")

    await ui(reconnecting)
    for i in range(3):
        await hive.broker.send("operator", "alice", f"while away {i}")
    away = [e.seq for e in hive.events.since(before) or [] if e.kind == "sent"]
    # Nobody was subscribed while they were sent: the page can only have them by replay.
    assert hive.events.statistics().subscribers == 0 and len(away) == 3

    def caught_up(page: Page) -> None:
        expect(page.locator("#conn")).to_have_text("● live")
        page.get_by_role("link", name="◆ FL0W ◆").click()
        expect(page.locator("#flow li").filter(has_text="while away")).to_contain_text(
            [f"while away {n}" for n in range(3)]
        )

    await ui(caught_up)
    [reconnect] = [h for url, h in requests if "/api/stream" in url]
    assert reconnect is not None  # EventSource sent Last-Event-ID itself: the last it had
    assert before < int(reconnect) < away[0]
    assert not [url for url, _ in requests if "/api/state" in url]  # no snapshot refetch


async def test_a_snapshot_never_holds_an_event_newer_than_its_seq(
    hive: Hive, inproc: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A send committed while the snapshot is read is either in it with its seq, or not."""
    await hive.spawn("alice")
    assert inproc.auth is not None
    dashboard = Dashboard(hive, inproc.api, inproc.auth)
    real_list = hive.approvals.list
    sent = False

    async def list_and_send(*args: Any, **kwargs: Any) -> Any:
        nonlocal sent
        if not sent:  # a message lands in the middle of the reads
            sent = True
            await hive.broker.send("operator", "alice", "mid-snapshot")
        return await real_list(*args, **kwargs)

    monkeypatch.setattr(hive.approvals, "list", list_and_send)
    snap = await dashboard.snapshot()
    [alice] = [a for a in snap["agents"] if a["name"] == "alice"]
    # The page applies events newer than seq on top: the send's event must not be one.
    assert alice["unread"] == 1 and snap["seq"] == hive.events.seq
