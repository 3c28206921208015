"""The schedule rules as a hypothesis state machine against an independent model.

The system under test is the sans-IO transactions of :mod:`hyperhive.schedules` on a real
database with the broker's schema (sqlite, and PostgreSQL), driven on a virtual clock:
create, edit, cancel some targets, fire now, and advance the clock — by little, or across
"downtime" of many intervals. The model walks the due times one by one (no closed
formula), so it checks the one-late-fire rule and the skipped count independently of the
implementation's arithmetic.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from hyperhive.broker import Outbox
from hyperhive.errors import RequestRefused
from hyperhive.schedules import (
    SOURCE_OPERATOR,
    Changes,
    check_spec,
    sql_cancel,
    sql_create,
    sql_due,
    sql_edit,
    sql_fire,
    sql_get,
)
from hyperhive.store import BROKER_MIGRATIONS, Conn
from hyperhive.store._pg import connect_pg

pytestmark = pytest.mark.both_stores  # the store's rules, on sqlite and on PostgreSQL

AGENTS = ("alice", "bob", "carol")
LIVE = frozenset(AGENTS)
intervals = st.one_of(st.none(), st.sampled_from([10, 60, 3600]))
target_sets = st.lists(st.sampled_from(AGENTS), min_size=1, max_size=3, unique=True)


def allow(_: object) -> None:
    pass


@attrs.define
class Model:
    targets: list[str]
    interval: int | None
    next_at: float | None
    ended: bool = False
    fires: int = 0
    skipped: int = 0
    last_skipped: int = 0


#: A new empty broker store for one run of the machine, and how to throw it away.
Opener = Callable[[], tuple[Conn, Callable[[], object]]]


def sqlite_store() -> tuple[Conn, Callable[[], object]]:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.row_factory = sqlite3.Row
    for migrate in BROKER_MIGRATIONS:
        migrate(conn)
    return conn, conn.close


class ScheduleRules(RuleBasedStateMachine):
    def __init__(self, opener: Opener) -> None:
        super().__init__()
        self.opener = opener

    @initialize()
    def open(self) -> None:
        self.conn, self.close = self.opener()
        self.now = 1_000_000.0
        self.model: dict[int, Model] = {}
        self.delivered: Counter[str] = Counter()

    def teardown(self) -> None:
        if hasattr(self, "conn"):
            self.close()

    def _pick(self, index: int) -> int:
        ids = sorted(self.model)
        return ids[index % len(ids)]

    def _deliver(self, m: Model) -> None:
        for t in m.targets:
            self.delivered[t] += 1

    # ------------------------------------------------------------ rules

    @rule(names=target_sets, interval=intervals, offset=st.integers(0, 7200))
    def create(self, names: list[str], interval: int | None, offset: int) -> None:
        spec = check_spec(
            names, "ping", self.now + offset, interval, None, None, timezone="UTC", live=LIVE
        )
        info = sql_create(self.conn, "operator", spec, SOURCE_OPERATOR, self.now)
        self.model[info.id] = Model(list(names), interval, self.now + offset)

    @precondition(lambda self: self.model)
    @rule(index=st.integers(0, 100), interval=st.sampled_from([10, 60, 3600]))
    def edit_interval(self, index: int, interval: int) -> None:
        sid = self._pick(index)
        m = self.model[sid]
        changes = Changes(interval_seconds=interval)
        if m.ended:
            with pytest.raises(RequestRefused, match="has ended"):
                sql_edit(self.conn, sid, changes, self.now, allow)
            return
        sql_edit(self.conn, sid, changes, self.now, allow)
        m.interval = interval

    @precondition(lambda self: self.model)
    @rule(index=st.integers(0, 100), remove=st.none() | target_sets)
    def cancel(self, index: int, remove: list[str] | None) -> None:
        sid = self._pick(index)
        m = self.model[sid]
        if m.ended:
            with pytest.raises(RequestRefused, match="has ended"):
                sql_cancel(self.conn, sid, remove, self.now, allow)
            return
        if remove and any(t not in m.targets for t in remove):
            with pytest.raises(RequestRefused, match="does not target"):
                sql_cancel(self.conn, sid, remove, self.now, allow)
            return
        sql_cancel(self.conn, sid, remove, self.now, allow)
        if remove:
            m.targets = [t for t in m.targets if t not in remove]
        if not remove or not m.targets:
            m.ended, m.next_at = True, None

    @precondition(lambda self: self.model)
    @rule(index=st.integers(0, 100))
    def fire_now(self, index: int) -> None:
        sid = self._pick(index)
        m = self.model[sid]
        outbox = Outbox(self.conn, self.now)
        if m.ended:
            with pytest.raises(RequestRefused, match="has ended"):
                sql_fire(self.conn, outbox, sid, self.now, live=LIVE, forced=True)
            return
        sql_fire(self.conn, outbox, sid, self.now, live=LIVE, forced=True)
        assert sorted(s.recipient for s in outbox.sent) == sorted(m.targets)
        self._deliver(m)
        m.fires += 1
        m.last_skipped = 0
        if m.interval is None:
            m.ended, m.next_at = True, None

    @rule(
        dt=st.one_of(
            st.integers(0, 120),  # a little
            st.integers(3600, 10 * 86400),  # downtime across many intervals
        )
    )
    def advance(self, dt: int) -> None:
        self.now += dt
        outbox = Outbox(self.conn, self.now)
        fired = []
        for sid in sql_due(self.conn, self.now):
            if sql_fire(self.conn, outbox, sid, self.now, live=LIVE) is not None:
                fired.append(sid)
        expected = []
        for sid, m in sorted(self.model.items()):
            if m.ended or m.next_at is None or m.next_at > self.now:
                continue
            expected.append(sid)
            # Walk the due times up to now: one fire stands for all of them.
            due, passed = m.next_at, 0
            while due <= self.now:
                passed += 1
                if m.interval is None:
                    break
                due += m.interval
            self._deliver(m)
            m.fires += 1
            m.skipped += passed - 1
            m.last_skipped = passed - 1
            if m.interval is None:
                m.ended, m.next_at = True, None
            else:
                m.next_at = due
        assert sorted(fired) == expected
        # Exactly one message per target per fired schedule: never a burst of late fires.
        per_target = Counter(s.recipient for s in outbox.sent)
        assert per_target == Counter(t for sid in fired for t in self.model[sid].targets)

    # ------------------------------------------------------------ invariants

    @invariant()
    def matches_the_model(self) -> None:
        if not hasattr(self, "conn"):
            return
        for sid, m in self.model.items():
            info = sql_get(self.conn, sid)
            got: dict[str, Any] = {
                "targets": info.targets,
                "interval": info.interval_seconds,
                "next_at": info.next_at,
                "ended": info.ended_at is not None,
                "fires": info.fires,
                "skipped": info.skipped,
                "last_skipped": info.last_skipped,
            }
            want = {
                "targets": m.targets,
                "interval": m.interval,
                "next_at": m.next_at,
                "ended": m.ended,
                "fires": m.fires,
                "skipped": m.skipped,
                "last_skipped": m.last_skipped,
            }
            assert got == want, sid
            # A schedule with no targets left has ended.
            assert info.targets or info.ended_at is not None

    @invariant()
    def inboxes_hold_what_fired(self) -> None:
        if not hasattr(self, "conn"):
            return
        rows = self.conn.execute(
            "SELECT recipient, COUNT(*) FROM messages WHERE sender = 'scheduler' GROUP BY 1"
        ).fetchall()
        assert {r[0]: r[1] for r in rows} == dict(+self.delivered)


@pytest.fixture
def opener(store: str, request: pytest.FixtureRequest) -> Iterator[Opener]:
    """sqlite: a new in-memory database per run. PostgreSQL: one migrated database, each run
    inside a transaction that is rolled back at its end (nothing of a run is left)."""
    if store == "sqlite":
        yield sqlite_store
        return
    pg = connect_pg(request.getfixturevalue("pg_url"), migrations=BROKER_MIGRATIONS)

    def in_transaction() -> tuple[Conn, Callable[[], object]]:
        pg.execute("BEGIN")
        return pg, lambda: pg.execute("ROLLBACK")

    try:
        yield in_transaction
    finally:
        pg.close()


def test_schedule_rules(opener: Opener) -> None:
    run_state_machine_as_test(
        lambda: ScheduleRules(opener),
        settings=settings(max_examples=60, stateful_step_count=30, deadline=None),
    )
