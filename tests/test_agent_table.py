"""The registry's in-memory table keeps its set of live names in step with every change."""

from __future__ import annotations

import attrs

from hyperhive.kinds import AgentState
from hyperhive.registry import AgentRecord, AgentTable


def _record(name: str, state: AgentState = AgentState.REGISTERED) -> AgentRecord:
    return AgentRecord(
        name=name,
        role="agent",
        state=state,
        backend="external",
        created_at=0.0,
        updated_at=0.0,
        parent=None,
        status_text="",
    )


def test_live_names_follow_registration_destroy_revive_and_purge() -> None:
    table = AgentTable({"alice": _record("alice"), "old": _record("old", AgentState.DESTROYED)})
    known, live = table.keys(), table.live
    assert set(known) == {"alice", "old"} and live == {"alice"}
    table["bob"] = _record("bob")
    table["alice"] = attrs.evolve(table["alice"], state=AgentState.DESTROYED)
    # The views handed out earlier see the changes (no copies to go stale).
    assert "bob" in known and live == {"bob"}
    table["old"] = _record("old")
    assert live == {"bob", "old"}
    del table["alice"]
    assert "alice" not in known and set(table) == {"bob", "old"} and len(table) == 2
    table.pop("old")
    assert live == {"bob"}


def test_nodes_counts_and_tombstones_follow_every_change() -> None:
    table = AgentTable(
        {
            "alice": _record("alice"),
            "bob": attrs.evolve(_record("bob"), node="n2"),
            "old": _record("old", AgentState.DESTROYED),
        }
    )
    assert dict(table.live_per_node()) == {"": 1, "n2": 1}
    assert [r.name for r in table.destroyed()] == ["old"]
    assert table.live_per_node() is table.live_per_node()  # kept while nothing changes
    live = table.live_records()
    assert [r.name for r in live] == ["alice", "bob"] and table.live_records() is live
    table["alice"] = attrs.evolve(table["alice"], state=AgentState.DESTROYED)
    assert dict(table.live_per_node()) == {"n2": 1}
    assert [r.name for r in table.destroyed()] == ["alice", "old"]
    table["carol"] = attrs.evolve(_record("carol"), node="n2")
    table["old"] = _record("old")  # revived
    assert dict(table.live_per_node()) == {"n2": 2, "": 1}
    assert [r.name for r in table.destroyed()] == ["alice"]
    assert [r.name for r in table.live_records()] == ["bob", "carol", "old"]
    del table["alice"]
    assert table.destroyed() == ()
