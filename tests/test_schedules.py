"""Scheduled prompts: approval, firing on trio's clock, one late fire after downtime, the verbs
and who may use them."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import attrs
import pytest
import trio
from trio.testing import MockClock

from hyperhive.clocks import TrioWallClock
from hyperhive.config import Config
from hyperhive.errors import RequestRefused
from hyperhive.protocol import ScheduleInfo
from hyperhive.schedules import (
    Cadence,
    Changes,
    Fire,
    check_agent_cadence,
    check_spec,
    first_cron_time,
    may_touch,
    plan_fire,
)
from hyperhive.supervisor import Hive, open_hive
from tests.conftest import Connect, DaemonProcess, connect_agent, make_paths, wait_until

pytestmark = pytest.mark.both_stores  # the store's rules, on sqlite and on PostgreSQL

# ---------------------------------------------------------------- rules


def test_plan_fire_interval_fires_once_late_and_counts_skipped() -> None:
    cadence = Cadence(interval_seconds=60)
    assert plan_fire(1000.0, cadence, 999.0) is None
    assert plan_fire(1000.0, cadence, 1000.0) == Fire(0, 1060.0)
    # Down from 1000 to 1250: due at 1000, 1060, 1120, 1180, 1240 -> one fire, 4 skipped.
    assert plan_fire(1000.0, cadence, 1250.0) == Fire(4, 1300.0)
    assert plan_fire(1000.0, Cadence(), 5000.0) == Fire(0, None)


def test_cron_is_evaluated_in_the_schedules_time_zone() -> None:
    berlin = Cadence(cron="0 9 * * *", timezone="Europe/Berlin")
    utc = Cadence(cron="0 9 * * *", timezone="UTC")
    start = datetime(2026, 6, 1, 12, 0, tzinfo=ZoneInfo("UTC")).timestamp()
    at_berlin = datetime.fromtimestamp(
        first_cron_time(berlin, start, inclusive=False), ZoneInfo("UTC")
    )
    at_utc = datetime.fromtimestamp(first_cron_time(utc, start, inclusive=False), ZoneInfo("UTC"))
    # 09:00 in Berlin in June (CEST) is 07:00 UTC.
    assert (at_berlin.hour, at_utc.hour) == (7, 9)
    assert at_berlin.day == at_utc.day == 2
    # Three days down: due on the 2nd, 3rd, 4th at 07:00 UTC -> one fire, two skipped.
    due = first_cron_time(berlin, start, inclusive=False)
    now = datetime(2026, 6, 4, 8, 0, tzinfo=ZoneInfo("UTC")).timestamp()
    fire = plan_fire(due, berlin, now)
    assert fire is not None and fire.skipped == 2
    assert fire.next_at == datetime(2026, 6, 5, 7, 0, tzinfo=ZoneInfo("UTC")).timestamp()


def test_check_spec_refuses_what_is_wrong() -> None:
    live = {"alice", "manager"}

    def spec(**kw: Any) -> None:
        args: dict[str, Any] = {
            "targets": ["alice"],
            "body": "hi",
            "first_at": 10.0,
            "interval_seconds": None,
            "cron": None,
            "description": None,
        } | kw
        check_spec(**args, timezone=kw.pop("timezone", "UTC"), live=live)

    spec()
    for bad, reason in [
        ({"targets": []}, "at least one target"),
        ({"targets": ["ghost"]}, "no live agent"),
        ({"body": "  "}, "empty"),
        ({"interval_seconds": 60, "cron": "* * * * *"}, "not both"),
        ({"interval_seconds": 0}, "between"),
        ({"cron": "61 * * * *"}, "five-field"),
        ({"cron": "* * * * * *"}, "five-field"),
        ({"first_at": float("nan")}, "first_at"),
    ]:
        with pytest.raises(RequestRefused, match=reason):
            spec(**bad)
    with pytest.raises(RequestRefused, match="time zone"):
        check_spec(["alice"], "b", 1.0, None, "0 9 * * *", None, timezone="Mars/Base", live=live)


def _info(owner: str, targets: list[str]) -> ScheduleInfo:
    return ScheduleInfo(
        id=1,
        owner=owner,
        targets=targets,
        body="b",
        description=None,
        interval_seconds=None,
        cron=None,
        timezone="UTC",
        next_at=1.0,
        created_at=0.0,
        source="operator",
        ended_at=None,
        last_fired_at=None,
        fires=0,
        skipped=0,
        last_skipped=0,
    )


def test_may_touch_own_or_subtree_only() -> None:
    # lead's subtree: lead, w1, w2.
    subtree = {"lead", "w1", "w2"}.__contains__
    assert may_touch("lead", _info("operator", ["w1", "w2"]), subtree)
    assert may_touch("lead", _info("lead", ["other"]), subtree)
    assert not may_touch("lead", _info("operator", ["w1", "other"]), subtree)
    assert not may_touch("lead", _info("other", ["other"]), subtree)
    assert may_touch("manager", _info("other", ["other"]), subtree)
    assert may_touch("operator", _info("other", ["other"]), subtree)


def test_an_agents_edit_only_slows_a_schedule_down() -> None:
    hourly = attrs.evolve(_info("alice", ["alice"]), interval_seconds=3600)
    check_agent_cadence("alice", hourly, Changes(interval_seconds=7200))
    check_agent_cadence("alice", hourly, Changes(once=True))
    check_agent_cadence("alice", hourly, Changes(body="new words"))
    for faster in (Changes(interval_seconds=60), Changes(cron="0 * * * *")):
        with pytest.raises(RequestRefused, match="new schedule"):
            check_agent_cadence("alice", hourly, faster)
        check_agent_cadence("manager", hourly, faster)
        check_agent_cadence("operator", hourly, faster)


# ---------------------------------------------------------------- a daemon on trio's clock


@asynccontextmanager
async def hive_on_trio_clock(root: Path, database: str | None) -> AsyncIterator[Hive]:
    config = Config(
        paths=make_paths(root), wall_clock=TrioWallClock(), backend="external", database=database
    )
    async with open_hive(config) as hive:
        yield hive


async def _host(hive: Hive, payload: dict[str, Any]) -> dict[str, Any]:
    from hyperhive.client import Client

    async with await Client.connect(hive.config.paths.host_socket, hello_role="cli") as client:
        return await client.request(payload)


async def test_recurring_schedule_fires_and_after_downtime_fires_once_late(
    short_tmp: Path, daemon_clock: MockClock, database: str | None
) -> None:
    config = Config(
        paths=make_paths(short_tmp),
        wall_clock=TrioWallClock(),
        backend="external",
        database=database,
    )
    async with open_hive(config) as hive:
        await hive.spawn("alice")
        start = config.wall_clock()
        reply = await _host(
            hive,
            {
                "cmd": "add_schedule",
                "targets": ["alice"],
                "body": "stand-up",
                "first_at": start + 60,
                "interval_seconds": 60,
            },
        )
        assert reply["ok"], reply
        sid = reply["schedule"]["id"]
        alice = await connect_agent(config.paths, "alice", role="harness")
        try:
            got = await alice.request({"cmd": "recv", "wait_seconds": 180, "max": 8})
        finally:
            await alice.aclose()
        [m] = got["messages"]
        assert (m["from"], m["body"]) == ("scheduler", "stand-up")
        assert m["sent_at"] == pytest.approx(start + 60)
        info = await hive.schedules.get(sid)
        assert (info.fires, info.skipped, info.next_at) == (1, 0, pytest.approx(start + 120))
    # Down until +390: due at +120, +180, +240, +300, +360 pass unseen.
    await trio.sleep(start + 390 - config.wall_clock())
    async with open_hive(config) as hive:
        alice = await connect_agent(config.paths, "alice", role="harness")
        try:
            got = await alice.request({"cmd": "recv", "wait_seconds": 5, "max": 8})
            [late] = got["messages"]
            assert late["body"].endswith("stand-up") and "4 earlier fire(s)" in late["body"]
            info = await hive.schedules.get(sid)
            assert (info.fires, info.skipped, info.last_skipped) == (2, 4, 4)
            assert info.next_at == pytest.approx(start + 420)
            listed = await _host(hive, {"cmd": "list_schedules"})
            assert listed["schedules"][0]["skipped"] == 4
            # Nothing more until the next due time, then one plain fire.
            got = await alice.request({"cmd": "recv", "wait_seconds": 180, "max": 8})
            [nxt] = got["messages"]
            assert nxt["body"] == "stand-up" and nxt["sent_at"] == pytest.approx(start + 420)
        finally:
            await alice.aclose()


async def test_agent_request_becomes_approval_and_approving_creates_it(
    short_tmp: Path, daemon_clock: MockClock, database: str | None
) -> None:
    async with hive_on_trio_clock(short_tmp, database) as hive:
        await hive.spawn("alice")
        now = hive.config.wall_clock()
        alice = await connect_agent(hive.config.paths, "alice", role="harness")
        try:
            req = {
                "cmd": "request_schedule",
                "targets": ["alice"],
                "body": "check the build",
                "first_at": now + 30,
                "interval_seconds": 3600,
                "description": "hourly build check",
            }
            reply = await alice.request(req)
            assert reply["ok"], reply
            approval = reply["approval"]
            assert (approval["kind"], approval["agent"], approval["status"]) == (
                "schedule",
                "alice",
                "pending",
            )
            assert "every 3600s" in approval["description"]
            # A second request while the first waits is refused, not merged into it.
            again = await alice.request(req | {"body": "other"})
            assert not again["ok"] and "still waiting" in again["error"]
            assert await hive.schedules.list() == []
            # The operator approves through host.sock.
            decided = await _host(hive, {"cmd": "approve", "id": approval["id"]})
            assert decided["approval"]["status"] == "approved", decided
            [info] = await hive.schedules.list()
            assert (info.owner, info.targets, info.source) == (
                "alice",
                ["alice"],
                f"approval:{approval['id']}",
            )
            # alice hears the decision (she requested it), then the first fire comes.
            got = await alice.request({"cmd": "recv", "wait_seconds": 60, "max": 8})
            heard = [(m["from"], m["body"].split(" ")[0]) for m in got["messages"]]
            assert heard[0] == ("system", "approval_resolved")
            while ("scheduler", "check") not in heard:
                got = await alice.request({"cmd": "recv", "wait_seconds": 60, "max": 8})
                assert got["messages"], heard
                heard += [(m["from"], m["body"].split(" ")[0]) for m in got["messages"]]
            assert heard == [("system", "approval_resolved"), ("scheduler", "check")]
            meta = await alice.request({"cmd": "get_agent_meta"})
            assert meta["schedules"] == [info.id]
        finally:
            await alice.aclose()


async def test_denied_request_creates_nothing(hive: Hive, connect: Connect) -> None:
    alice = await connect("alice")
    reply = await alice.request(
        {"cmd": "request_schedule", "targets": ["alice"], "body": "x", "first_at": 1e10}
    )
    assert reply["ok"], reply
    await _host(hive, {"cmd": "deny", "id": reply["approval"]["id"], "note": "no"})
    assert await hive.schedules.list(include_ended=True) == []


async def test_agent_cannot_touch_a_schedule_outside_its_subtree(
    hive: Hive, connect: Connect
) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    manager = await connect("manager")
    first = 1e10
    for_alice = await _host(
        hive,
        {
            "cmd": "add_schedule",
            "targets": ["alice"],
            "body": "a",
            "first_at": first,
            "interval_seconds": 60,
        },
    )
    for_bob = await _host(
        hive,
        {"cmd": "add_schedule", "targets": ["bob"], "body": "b", "first_at": first},
    )
    a_id, b_id = for_alice["schedule"]["id"], for_bob["schedule"]["id"]
    for verb in (
        {"cmd": "edit_schedule", "id": a_id, "body": "hijacked"},
        {"cmd": "cancel_schedule", "id": a_id},
        {"cmd": "fire_schedule_now", "id": a_id},
    ):
        refused = await bob.request(verb)
        assert not refused["ok"] and "outside your subtree" in refused["error"], refused
    info = await hive.schedules.get(a_id)
    assert (info.body, info.ended_at, info.fires) == ("a", None, 0)
    assert await hive.broker.unread("alice") == 0
    # bob sees only what concerns it; alice's schedule is alice's to touch.
    listed = await bob.request({"cmd": "list_schedules"})
    assert [s["id"] for s in listed["schedules"]] == [b_id]
    assert (await bob.request({"cmd": "edit_schedule", "id": b_id, "body": "b2"}))["ok"]
    # For bob, but an agent's edit never makes it fire more often.
    assert (await hive.schedules.get(b_id)).interval_seconds is None
    for faster in ({"interval_seconds": 1}, {"cron": "* * * * *"}):
        refused = await bob.request({"cmd": "edit_schedule", "id": b_id} | faster)
        assert not refused["ok"] and "ask for a new schedule" in refused["error"], refused
    # Its own schedule, but it may not reach beyond its subtree by adding a target.
    refused = await bob.request({"cmd": "edit_schedule", "id": b_id, "targets_add": ["alice"]})
    assert not refused["ok"] and "cannot add alice" in refused["error"], refused
    assert (await hive.schedules.get(b_id)).targets == ["bob"]
    assert (await alice.request({"cmd": "fire_schedule_now", "id": a_id}))["ok"]
    # The manager may touch any.
    assert (await manager.request({"cmd": "cancel_schedule", "id": a_id}))["ok"]
    assert (await hive.schedules.get(a_id)).ended_at is not None


async def test_cancel_targets_then_the_last_ends_it(hive: Hive, connect: Connect) -> None:
    await connect("alice")
    await connect("bob")
    sid = (
        await _host(
            hive,
            {
                "cmd": "add_schedule",
                "targets": ["alice", "bob"],
                "body": "x",
                "first_at": 1e10,
                "interval_seconds": 60,
            },
        )
    )["schedule"]["id"]
    reply = await _host(hive, {"cmd": "cancel_schedule", "id": sid, "targets": ["alice"]})
    assert reply["schedule"]["targets"] == ["bob"] and reply["schedule"]["ended_at"] is None
    refused = await _host(hive, {"cmd": "cancel_schedule", "id": sid, "targets": ["alice"]})
    assert not refused["ok"] and "does not target" in refused["error"]
    reply = await _host(hive, {"cmd": "cancel_schedule", "id": sid, "targets": ["bob"]})
    assert reply["schedule"]["targets"] == [] and reply["schedule"]["ended_at"] is not None
    assert await hive.schedules.list() == []
    refused = await _host(hive, {"cmd": "edit_schedule", "id": sid, "body": "again"})
    assert not refused["ok"] and "has ended" in refused["error"]


async def test_fire_now_keeps_the_cadence_and_consumes_a_one_shot(
    hive: Hive, connect: Connect
) -> None:
    alice = await connect("alice")
    recurring = (
        await _host(
            hive,
            {
                "cmd": "add_schedule",
                "targets": ["alice"],
                "body": "r",
                "first_at": 1e10,
                "interval_seconds": 60,
            },
        )
    )["schedule"]
    once = (
        await _host(
            hive, {"cmd": "add_schedule", "targets": ["alice"], "body": "o", "first_at": 1e10}
        )
    )["schedule"]
    fired = (await _host(hive, {"cmd": "fire_schedule_now", "id": recurring["id"]}))["schedule"]
    assert (fired["fires"], fired["next_at"], fired["ended_at"]) == (1, 1e10, None)
    fired = (await _host(hive, {"cmd": "fire_schedule_now", "id": once["id"]}))["schedule"]
    assert fired["fires"] == 1 and fired["next_at"] is None and fired["ended_at"] is not None
    got = await alice.request({"cmd": "recv", "max": 8})
    assert [(m["from"], m["body"]) for m in got["messages"]] == [
        ("scheduler", "r"),
        ("scheduler", "o"),
    ]


async def test_edit_changes_cadence_and_targets(hive: Hive, connect: Connect) -> None:
    await connect("alice")
    await connect("bob")
    sid = (
        await _host(
            hive,
            {
                "cmd": "add_schedule",
                "targets": ["alice"],
                "body": "x",
                "first_at": 1e10,
                "interval_seconds": 60,
            },
        )
    )["schedule"]["id"]
    edited = await _host(
        hive,
        {
            "cmd": "edit_schedule",
            "id": sid,
            "cron": "0 9 * * 1-5",
            "targets_add": ["bob"],
            "targets_remove": ["alice"],
            "description": "weekdays",
        },
    )
    s = edited["schedule"]
    assert (s["interval_seconds"], s["cron"], s["targets"], s["description"]) == (
        None,
        "0 9 * * 1-5",
        ["bob"],
        "weekdays",
    )
    assert s["next_at"] < 1e10  # the new cron's first time after now
    once = (await _host(hive, {"cmd": "edit_schedule", "id": sid, "once": True}))["schedule"]
    assert once["cron"] is None and once["interval_seconds"] is None
    refused = await _host(hive, {"cmd": "edit_schedule", "id": sid, "targets_remove": ["bob"]})
    assert not refused["ok"] and "cancel it instead" in refused["error"]


# ---------------------------------------------------------------- a real daemon restart


async def test_real_daemon_restart_fires_once_late_with_skipped_count(
    daemon: DaemonProcess, nursery: trio.Nursery
) -> None:
    import time

    assert (await daemon.call({"cmd": "spawn", "name": "alice"}))["ok"]
    interval = 2
    reply = await daemon.call(
        {
            "cmd": "add_schedule",
            "targets": ["alice"],
            "body": "tick",
            "first_at": time.time() + 0.2,
            "interval_seconds": interval,
        }
    )
    sid = reply["schedule"]["id"]
    alice = await connect_agent(daemon.paths, "alice")
    try:
        got = await alice.request({"cmd": "recv", "wait_seconds": 10})
        assert [m["body"] for m in got["messages"]] == ["tick"]
    finally:
        await alice.aclose()
    assert await daemon.stop(signal.SIGTERM) == 0
    stopped_at = time.time()
    # The downtime itself (several intervals), not a stand-in for synchronisation.
    await trio.sleep(4.5 * interval)
    await daemon.start(nursery)
    restarted_at = time.time()

    async def fired_since_the_restart() -> bool:
        listed = await daemon.call({"cmd": "list_schedules"})
        return any(
            s["id"] == sid and (s["last_fired_at"] or 0) >= stopped_at for s in listed["schedules"]
        )

    await wait_until(fired_since_the_restart)
    alice = await connect_agent(daemon.paths, "alice")
    try:
        got = await alice.request({"cmd": "recv", "max": 32})
    finally:
        await alice.aclose()
    after = [m for m in got["messages"] if m["sent_at"] >= stopped_at]
    # The first fire after the restart is the one late fire; it counts what it stands for.
    first = after[0]["body"]
    assert first.startswith(f"[schedule #{sid} fires late: ") and first.endswith("\ntick"), first
    skipped = int(first.split("fires late: ")[1].split(" ")[0])
    # Down for at least 4.5 intervals: at least 4 due times passed, one late fire for them.
    assert 3 <= skipped <= int((restarted_at - stopped_at) / interval) + 2
    # Any later fire is a plain one on the cadence again.
    assert all(m["body"] == "tick" for m in after[1:])
    [s] = (await daemon.call({"cmd": "list_schedules"}))["schedules"]
    assert s["skipped"] >= skipped


async def test_an_agent_may_touch_schedules_for_agents_below_it(
    hive: Hive, connect: Connect
) -> None:
    lead = await connect("lead")
    await connect("w1")
    await connect("sib")
    assert (await _host(hive, {"cmd": "set_parent", "child": "w1", "parent": "lead"}))["ok"]

    async def add(targets: list[str]) -> int:
        reply = await _host(
            hive,
            {
                "cmd": "add_schedule",
                "targets": targets,
                "body": "x",
                "first_at": 1e10,
                "interval_seconds": 60,
            },
        )
        return int(reply["schedule"]["id"])

    below, mixed, other = await add(["w1"]), await add(["w1", "sib"]), await add(["sib"])
    listed = await lead.request({"cmd": "list_schedules"})
    assert [s["id"] for s in listed["schedules"]] == [below]
    assert (await lead.request({"cmd": "edit_schedule", "id": below, "body": "y"}))["ok"]
    for sid in (mixed, other):
        refused = await lead.request({"cmd": "cancel_schedule", "id": sid})
        assert not refused["ok"] and "outside your subtree" in refused["error"]
    assert (await lead.request({"cmd": "cancel_schedule", "id": below}))["ok"]


async def test_loose_ends_carry_the_schedules_the_caller_owns(hive: Hive, connect: Connect) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    manager = await connect("manager")
    reply = await alice.request(
        {
            "cmd": "request_schedule",
            "targets": ["alice", "bob"],
            "body": "nudge bob",
            "first_at": 1e10,
        }
    )
    await _host(hive, {"cmd": "approve", "id": reply["approval"]["id"]})
    [mine] = await hive.schedules.list()
    ends = await alice.request({"cmd": "get_loose_ends"})
    assert [s["id"] for s in ends["schedules"]] == [mine.id]
    [item] = [i for i in ends["items"] if i["kind"] == "schedule"]
    assert (item["id"], item["owner"], item["target"], item["summary"]) == (
        mine.id,
        "alice",
        "alice, bob",
        "nudge bob",
    )
    # bob is a target, not its owner: not bob's loose end, and (alice is not below bob)
    # not bob's to cancel.
    assert (await bob.request({"cmd": "get_loose_ends"}))["schedules"] == []
    assert mine.id in [
        s["id"] for s in (await manager.request({"cmd": "get_loose_ends"}))["schedules"]
    ]
    refused = await bob.request({"cmd": "cancel_loose_end", "kind": "schedule", "id": mine.id})
    assert not refused["ok"] and "outside your subtree" in refused["error"]
    done = await alice.request({"cmd": "cancel_loose_end", "kind": "schedule", "id": mine.id})
    assert done["ok"], done
    assert (await hive.schedules.get(mine.id)).ended_at is not None
    assert (await alice.request({"cmd": "get_loose_ends"}))["schedules"] == []


async def test_cron_runs_in_the_daemons_time_zone_stored_per_schedule(
    short_tmp: Path, database: str | None
) -> None:
    config = Config(
        paths=make_paths(short_tmp), backend="external", timezone="Asia/Tokyo", database=database
    )
    async with open_hive(config) as hive:
        await hive.spawn("alice")
        base = {"cmd": "add_schedule", "targets": ["alice"], "body": "b", "first_at": 1e9}
        tokyo = (await _host(hive, base | {"cron": "0 9 * * *"}))["schedule"]
        utc = (await _host(hive, base | {"cron": "0 9 * * *", "timezone": "UTC"}))["schedule"]
        bad = await _host(hive, base | {"cron": "0 9 * * *", "timezone": "../etc/passwd"})
    assert (tokyo["timezone"], utc["timezone"]) == ("Asia/Tokyo", "UTC")
    at_tokyo = datetime.fromtimestamp(tokyo["next_at"], ZoneInfo("Asia/Tokyo"))
    at_utc = datetime.fromtimestamp(utc["next_at"], ZoneInfo("UTC"))
    assert (at_tokyo.hour, at_tokyo.minute, at_utc.hour) == (9, 0, 9)
    # first_at 1e9 is 2001-09-09 01:46:40 UTC (10:46:40 in Tokyo): the first 09:00 at or
    # after it in each zone.
    assert (
        tokyo["next_at"] == datetime(2001, 9, 10, 9, 0, tzinfo=ZoneInfo("Asia/Tokyo")).timestamp()
    )
    assert utc["next_at"] == datetime(2001, 9, 9, 9, 0, tzinfo=ZoneInfo("UTC")).timestamp()
    assert not bad["ok"] and "unknown time zone" in bad["error"]
