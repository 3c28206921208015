"""The hierarchy's pure functions (``hyperhive.topology``): walks, subtrees, re-parenting rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyperhive.topology import (
    TopologyError,
    ancestors,
    check_parent,
    children,
    in_subtree,
    orphaned_by,
    subtree,
    walk,
)

HIVE: dict[str, str | None] = {
    "manager": None,
    "alice": "manager",
    "bob": "alice",
    "carol": "alice",
    "dave": "bob",
    "eve": "manager",
}


def test_ancestors_walk_up_to_the_root() -> None:
    assert ancestors(HIVE, "dave") == ["bob", "alice", "manager"]
    assert ancestors(HIVE, "manager") == []
    assert ancestors(HIVE, "eve") == ["manager"]


def test_subtree_is_the_root_and_everything_below() -> None:
    assert subtree(HIVE, "alice") == {"alice", "bob", "carol", "dave"}
    assert subtree(HIVE, "dave") == {"dave"}
    assert subtree(HIVE, "manager") == set(HIVE)
    assert children(HIVE, "alice") == ["bob", "carol"]


def test_in_subtree() -> None:
    assert in_subtree(HIVE, "alice", "dave")
    assert in_subtree(HIVE, "alice", "alice")
    assert not in_subtree(HIVE, "alice", "eve")
    assert not in_subtree(HIVE, "bob", "carol")
    assert not in_subtree(HIVE, "dave", "bob")


@pytest.mark.parametrize(
    ("child", "parent", "error"),
    [
        ("zed", "manager", "unknown agent 'zed'"),
        ("bob", "zed", "unknown agent 'zed'"),
        ("bob", "bob", "'bob' cannot be its own parent"),
        ("alice", "dave", "would make a cycle"),
        ("alice", "bob", "would make a cycle"),
    ],
)
def test_check_parent_refuses(child: str, parent: str, error: str) -> None:
    with pytest.raises(TopologyError, match=error):
        check_parent(HIVE, child, parent)


def test_check_parent_allows_moves_that_keep_a_tree() -> None:
    check_parent(HIVE, "bob", "eve")
    check_parent(HIVE, "dave", "manager")
    check_parent(HIVE, "bob", None)
    check_parent(HIVE, "dave", "carol")


def test_orphans_go_to_the_grandparent() -> None:
    assert orphaned_by(HIVE, "alice") == {"bob": "manager", "carol": "manager"}
    assert orphaned_by(HIVE, "dave") == {}


def test_walk_is_depth_first_alphabetical_and_shows_cycles() -> None:
    assert list(walk(HIVE)) == [
        ("manager", 0),
        ("alice", 1),
        ("bob", 2),
        ("dave", 3),
        ("carol", 2),
        ("eve", 1),
    ]
    looped = {"manager": None, "x": "y", "y": "x"}
    assert sorted(name for name, _ in walk(looped)) == ["manager", "x", "y"]
    assert ancestors(looped, "x") == ["y"]


NAMES = [f"a{i}" for i in range(8)]


@st.composite
def re_parentings(draw: st.DrawFn) -> list[tuple[str, str | None]]:
    return draw(
        st.lists(
            st.tuples(
                st.sampled_from(NAMES), st.one_of(st.none(), st.sampled_from(["manager", *NAMES]))
            ),
            max_size=40,
        )
    )


@given(re_parentings())
def test_accepted_re_parentings_never_make_a_cycle(moves: list[tuple[str, str | None]]) -> None:
    parents: dict[str, str | None] = {"manager": None, **dict.fromkeys(NAMES, "manager")}
    for child, parent in moves:
        try:
            check_parent(parents, child, parent)
        except TopologyError:
            continue
        parents[child] = parent
        # Every walk up ends at a root without meeting itself.
        for name in parents:
            up = ancestors(parents, name)
            assert name not in up
            assert up == [] or parents[up[-1]] is None
        # A subtree is closed: each member's children are members, and each member below
        # the root has its parent inside.
        for root in parents:
            below = subtree(parents, root)
            for member in below:
                assert set(children(parents, member)) <= below
                assert member == root or parents[member] in below
                assert in_subtree(parents, root, member)
            assert {n for n in parents if in_subtree(parents, root, n)} == below
        # The tree walk lists each agent exactly once.
        assert sorted(n for n, _ in walk(parents)) == sorted(parents)
