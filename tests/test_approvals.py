"""The approval queue: dedupe, approve/deny with notes, the manager always hears."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import trio

from hyperhive.approvals import ApprovalKind, check_commit_ref
from hyperhive.client import Client
from hyperhive.config_repo import fetch_proposal
from hyperhive.errors import RequestRefused
from hyperhive.protocol import ApprovalInfo
from hyperhive.supervisor import Hive
from tests.conftest import Connect, git, propose_config
from tests.harness.fixtures import eventually

pytestmark = pytest.mark.both_stores  # the store's rules, on sqlite and on PostgreSQL


async def manager_events(hive: Hive) -> list[dict[str, object]]:
    messages = await hive.broker.recv("manager", limit=32)
    out = []
    for m in messages:
        kind, _, payload = m.body.partition(" ")
        assert m.from_ == "system" and kind == "approval_resolved"
        out.append(json.loads(payload))
    return out


async def test_spawn_request_dedupes_and_approve_creates_the_agent(
    hive: Hive, connect: Connect
) -> None:
    manager = await connect("manager")
    first = await manager.request({"cmd": "request_spawn", "name": "alice", "description": "dev"})
    again = await manager.request({"cmd": "request_spawn", "name": "alice"})
    assert first["approval"]["id"] == again["approval"]["id"]
    assert [a.agent for a in await hive.approvals.list(pending_only=True)] == ["alice"]
    assert "alice" not in hive.registry.known()
    assert not hive.config.paths.agent_dir("alice").exists()

    approved = await hive.approvals.approve(first["approval"]["id"])
    assert approved.status == "approved" and approved.resolved_at is not None
    assert "alice" in hive.registry.live()
    assert hive.config.paths.agent_socket("alice").exists()
    for sub in ("claude", "state"):
        assert (hive.config.paths.agent_dir("alice") / sub).is_dir()
    assert (hive.config.paths.proposed_dir("alice") / ".git").is_dir()
    [event] = await manager_events(hive)
    assert event == {
        "id": approved.id,
        "agent": "alice",
        "kind": "spawn",
        "commit_ref": None,
        "status": "approved",
        "note": None,
    }
    # Decided once: a second decision is refused.
    with pytest.raises(RequestRefused, match="already approved"):
        await hive.approvals.deny(approved.id, "late")
    # A new request for the same name is refused now that the agent exists.
    reply = await manager.request({"cmd": "request_spawn", "name": "alice"})
    assert reply["ok"] is False and "already exists" in reply["error"]


async def test_deny_with_note_creates_nothing(hive: Hive, connect: Connect) -> None:
    manager = await connect("manager")
    req = await manager.request({"cmd": "request_spawn", "name": "bob"})
    denied = await hive.approvals.deny(req["approval"]["id"], "not today")
    assert (denied.status, denied.note) == ("denied", "not today")
    assert "bob" not in hive.registry.known()
    assert not hive.config.paths.agent_dir("bob").exists()
    [event] = await manager_events(hive)
    assert event["status"] == "denied" and event["note"] == "not today"
    # History keeps the decision; a fresh request makes a new row.
    again = await manager.request({"cmd": "request_spawn", "name": "bob"})
    assert again["approval"]["id"] != req["approval"]["id"]


async def test_spawn_names_are_validated_before_anything(hive: Hive, connect: Connect) -> None:
    manager = await connect("manager")
    for name in ["../x", "a/b", "UPPER", "toolongname1", "operator", "manager", ""]:
        reply = await manager.request({"cmd": "request_spawn", "name": name})
        assert reply["ok"] is False, name
        assert "name" in reply["error"] or "exists" in reply["error"], reply
    assert await hive.approvals.list(pending_only=False) == []
    assert sorted(p.name for p in (hive.config.paths.state_dir / "agents").iterdir()) == ["manager"]


def propose(hive: Hive, agent: str, toml: str) -> str:
    """A commit in the proposed repo, as input to the daemon's side of apply_commit (tags,
    validation, rollback) under test here. The manager making such a commit from inside its
    container is tests/harness/test_manager_config.py."""
    return propose_config(hive.config.paths, agent, toml)


def tags(hive: Hive, agent: str) -> set[str]:
    return set(git(hive.config.paths.applied_dir(agent), "tag", "-l").split())


def tag_message(hive: Hive, agent: str, tag: str) -> str:
    return git(hive.config.paths.applied_dir(agent), "tag", "-l", "--format=%(contents)", tag)


async def test_apply_commit_request_validation_and_dedupe(hive: Hive, connect: Connect) -> None:
    manager = await connect("manager")
    await hive.spawn("alice")
    for ref in ["main", "HEAD~1", "abc", "ABCDEF1", "g" * 7, "a" * 41]:
        reply = await manager.request(
            {"cmd": "request_apply_commit", "agent": "alice", "commit_ref": ref}
        )
        assert reply["ok"] is False and "commit" in reply["error"], ref
    sha = propose(hive, "alice", 'model = "sonnet"\n')
    req = {"cmd": "request_apply_commit", "agent": "alice", "commit_ref": sha[:10]}
    one, two = await manager.request(req), await manager.request(req)
    assert one["approval"]["id"] == two["approval"]["id"]
    assert one["approval"]["fetched_sha"] == sha
    assert f"proposal/{one['approval']['id']}" in tags(hive, "alice")
    unknown = await manager.request({**req, "commit_ref": "0" * 40})
    assert unknown["ok"] is False
    [failed] = [a for a in await hive.approvals.list(pending_only=False) if a.status == "failed"]
    assert failed.commit_ref == "0" * 40 and failed.note
    ghost = await manager.request({**req, "agent": "ghost"})
    assert ghost["ok"] is False and "no agent" in ghost["error"]


async def test_apply_commit_deploys_fails_and_denies_with_tags(hive: Hive) -> None:
    await hive.spawn("alice")
    applied = hive.config.paths.applied_dir("alice")
    # A good change: approved, main moves, the model applies to the next turn.
    good = await hive.request_apply_commit(
        "alice", propose(hive, "alice", 'model = "sonnet"\n'), None
    )
    result = await hive.approvals.approve(good.id)
    assert result.status == "approved", result.note
    assert {f"proposal/{good.id}", f"approved/{good.id}", f"deployed/{good.id}"} <= tags(
        hive, "alice"
    )
    assert git(applied, "rev-parse", "main") == good.fetched_sha
    assert hive.config.paths.model_file("alice").read_text().strip() == "sonnet"
    [event] = await manager_events(hive)
    assert event["status"] == "approved" and event["commit_ref"] == good.commit_ref

    # An invalid agent.toml: failed/<id> carries the error, main goes back.
    bad = await hive.request_apply_commit("alice", propose(hive, "alice", "cpu_quota = 5\n"), None)
    result = await hive.approvals.approve(bad.id)
    assert result.status == "failed" and "cpu_quota" in (result.note or "")
    assert f"failed/{bad.id}" in tags(hive, "alice")
    assert "cpu_quota" in tag_message(hive, "alice", f"failed/{bad.id}")
    assert git(applied, "rev-parse", "main") == good.fetched_sha
    assert hive.config.paths.model_file("alice").read_text().strip() == "sonnet"
    [event] = await manager_events(hive)
    assert event["status"] == "failed" and "cpu_quota" in str(event["note"])

    # Denied with a note: denied/<id> carries it; nothing moves.
    other = await hive.request_apply_commit(
        "alice", propose(hive, "alice", 'model = "opus"\n'), "try opus"
    )
    denied = await hive.approvals.deny(other.id, "too expensive")
    assert denied.status == "denied"
    assert tag_message(hive, "alice", f"denied/{other.id}") == "too expensive"
    assert git(applied, "rev-parse", "main") == good.fetched_sha
    assert (await manager_events(hive))[0]["note"] == "too expensive"


async def test_allowed_recipients_follow_deploys(hive: Hive, connect: Connect) -> None:
    alice = await connect("alice")
    await connect("bob")
    await connect("carol")
    change = await hive.request_apply_commit(
        "alice", propose(hive, "alice", 'allowed_recipients = ["bob"]\n'), None
    )
    await hive.approvals.approve(change.id)
    assert (await alice.request({"cmd": "send", "to": "bob", "body": "hi"}))["ok"]
    refused = await alice.request({"cmd": "send", "to": "carol", "body": "hi"})
    assert refused["ok"] is False and "may not send to carol" in refused["error"]


async def test_destroy_fails_pending_approvals(hive: Hive) -> None:
    await hive.spawn("alice")
    info = await hive.request_apply_commit("alice", propose(hive, "alice", "# x\n"), None)
    await hive.destroy("alice", purge=False)
    after = await hive.approvals.get(info.id)
    assert (after.status, after.note) == ("failed", "agent destroyed")
    assert (await manager_events(hive))[0]["note"] == "agent destroyed"
    assert not hive.config.paths.agent_socket("alice").exists()
    assert hive.config.paths.agent_dir("alice").exists()  # tombstone keeps state
    [tomb] = await hive.tombstones()
    assert tomb.name == "alice"
    # Revive goes through a spawn approval that reuses the kept state.
    revive = await hive.revive("alice")
    (hive.config.paths.agent_dir("alice") / "state" / "notes.md").write_text("kept")
    await hive.approvals.approve(revive.id)
    assert "alice" in hive.registry.live()
    assert (hive.config.paths.agent_dir("alice") / "state" / "notes.md").read_text() == "kept"


async def test_purge_rules(hive: Hive) -> None:
    await hive.spawn("alice")
    with pytest.raises(RequestRefused, match="manager"):
        await hive.destroy("manager", purge=True)
    with pytest.raises(RequestRefused, match="live"):
        await hive.destroy("alice", purge=True)
    assert hive.config.paths.agent_dir("alice").exists()
    await hive.destroy("alice", purge=False)
    await hive.destroy("alice", purge=True)
    assert not hive.config.paths.agent_dir("alice").exists()
    assert not hive.config.paths.proposed_dir("alice").parent.exists()
    assert not hive.config.paths.applied_dir("alice").exists()
    assert "alice" not in hive.registry.known()


async def test_what_waits_for_a_purged_agent_goes_with_it(hive: Hive, connect: Connect) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    await bob.request({"cmd": "send", "to": "alice", "body": "read and acked"})
    got = await alice.request({"cmd": "recv", "max": 1})
    assert [m["body"] for m in got["messages"]] == ["read and acked"]
    await bob.request({"cmd": "send", "to": "alice", "body": "never read"})
    reminded = await alice.request({"cmd": "remind", "body": "later", "in_seconds": 3600})
    assert reminded["ok"], reminded
    # Open questions it asked (the operator, bob) and one it was asked (by bob).
    for asked in ({}, {"to": "bob"}):
        assert (await alice.request({"cmd": "ask", "question": "mine?", **asked}))["ok"]
    of_alice = await bob.request({"cmd": "ask", "question": "alice?", "to": "alice"})
    # Schedules: one alice owns (requested, approved), two the operator's that target her.
    every = {"body": "tick", "first_at": time.time() + 3600, "interval_seconds": 3600}
    requested = await alice.request({"cmd": "request_schedule", "targets": ["bob"], **every})
    await alice.aclose()
    async with await Client.connect(hive.config.paths.host_socket, hello_role="cli") as op:
        assert (await op.request({"cmd": "approve", "id": requested["approval"]["id"]}))["ok"]
        for targets in (["alice", "bob"], ["alice"]):
            added = await op.request({"cmd": "add_schedule", "targets": targets, **every})
            assert added["ok"], added
        for purge in (False, True):
            done = await op.request({"cmd": "destroy", "name": "alice", "purge": purge})
            assert done["ok"], done
        # What waited for the purged alice is gone with her; what she had read stays in
        # the hive's history.
        assert (await op.request({"cmd": "reminders", "include_sent": True}))["reminders"] == []
        assert (await op.request({"cmd": "questions"}))["questions"] == []
        listed = await op.request({"cmd": "list_schedules", "include_ended": True})
        left = [(s["owner"], s["targets"], s["ended_at"] is None) for s in listed["schedules"]]
        assert left == [
            ("alice", ["bob"], False),
            ("operator", ["bob"], True),
            ("operator", [], False),
        ]
        assert (await op.request({"cmd": "spawn", "name": "alice"}))["ok"]
    fresh = await connect("alice", spawn=False)
    assert (await fresh.request({"cmd": "status"}))["unread"] == 0
    assert (await fresh.request({"cmd": "recv", "max": 32}))["messages"] == []
    loose = await fresh.request({"cmd": "get_loose_ends"})
    assert loose["items"] == [] and loose["questions"] == []
    refused = await fresh.request({"cmd": "answer", "id": of_alice["id"], "answer": "as alice"})
    assert not refused["ok"] and "already resolved" in refused["error"]
    # bob hears that his question to alice will not be answered.
    told = await bob.request({"cmd": "recv", "max": 32})
    notes = [m["body"] for m in told["messages"] if m["from"] == "system"]
    assert any("question_answered" in n and "alice was purged" in n for n in notes), told
    bodies = [m.body for m in await hive.broker.flow(10)]
    assert "read and acked" in bodies and "never read" not in bodies


def test_commit_ref_rule() -> None:
    assert check_commit_ref("0123abc") == "0123abc"
    assert check_commit_ref("f" * 40) == "f" * 40
    with pytest.raises(RequestRefused):
        check_commit_ref("0123ab")


async def _interrupt_approval(hive: Hive, approval_id: int) -> None:
    """Approve, and cancel the decision right after its effect happened (before it is
    recorded), like a daemon that dies there."""
    original = hive.approvals._executors[ApprovalKind.SPAWN]
    done = trio.Event()

    async def then_hang(info: ApprovalInfo) -> None:
        await original(info)
        done.set()
        await trio.sleep_forever()

    hive.approvals._executors[ApprovalKind.SPAWN] = then_hang
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hive.approvals.approve, approval_id)
            await done.wait()
            nursery.cancel_scope.cancel()
    finally:
        hive.approvals._executors[ApprovalKind.SPAWN] = original


async def test_an_interrupted_approval_is_finished_not_failed(hive: Hive, connect: Connect) -> None:
    manager = await connect("manager")
    first = await manager.request({"cmd": "request_spawn", "name": "alice"})
    second = await manager.request({"cmd": "request_spawn", "name": "bob"})
    for reply in (first, second):
        await _interrupt_approval(hive, reply["approval"]["id"])
    assert {"alice", "bob"} <= hive.registry.live()
    assert [a.status for a in await hive.approvals.list(pending_only=False)] == [
        "pending",
        "pending",
    ]
    # Its effect happened: it can no longer be denied.
    with pytest.raises(RequestRefused, match="being carried out"):
        await hive.approvals.deny(first["approval"]["id"], "too late")

    # Approving again finishes it (the agent exists: that is success, not "already exists").
    again = await hive.approvals.approve(first["approval"]["id"])
    assert (again.status, again.note) == ("approved", None)
    # The start-up recovery finishes the other one the same way.
    await hive.finish_interrupted()
    finished = await hive.approvals.get(second["approval"]["id"])
    assert (finished.status, finished.note) == ("approved", None)
    assert {"alice", "bob"} <= hive.registry.live()
    statuses = [e["status"] for e in await manager_events(hive)]
    assert statuses == ["approved", "approved"]


async def test_an_approval_made_while_its_proposal_is_fetched_waits_for_it(
    hive: Hive, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The approval is listed as soon as it is recorded, before the daemon has fetched and
    tagged the proposal: the operator approving in that moment gets the deploy, not a
    failed approval (`no fetched proposal`)."""
    fetching, go_on = trio.Event(), trio.Event()

    async def slow_fetch(proposed: Path, applied: Path, commit_ref: str, approval_id: int) -> str:
        fetching.set()
        await go_on.wait()
        return await fetch_proposal(proposed, applied, commit_ref, approval_id)

    # The seam is only the fetch's timing; the manager and the operator act on their sockets.
    monkeypatch.setattr("hyperhive.hive.fetch_proposal", slow_fetch)
    manager = await connect("manager")
    await hive.spawn("alice")
    sha = propose(hive, "alice", 'model = "sonnet"\n')
    replies: dict[str, dict[str, object]] = {}

    async def request() -> None:
        replies["manager"] = await manager.request(
            {"cmd": "request_apply_commit", "agent": "alice", "commit_ref": sha}
        )

    async def approve(approval_id: int) -> None:
        async with await Client.connect(hive.config.paths.host_socket) as host:
            replies["operator"] = await host.request({"cmd": "approve", "id": approval_id})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(request)
        await fetching.wait()
        [pending] = await hive.approvals.list(pending_only=True)  # listed, not yet fetched
        assert pending.fetched_sha is None
        nursery.start_soon(approve, pending.id)
        # The operator's approve is taken, and waits for the fetch (it used to go on, find no
        # proposal tag and fail the approval).
        lock = hive._fetch_lock("alice")
        await eventually(lambda: lock.statistics().tasks_waiting == 1, what="the approve")
        assert "operator" not in replies
        go_on.set()
    assert replies["manager"]["ok"] is True
    assert replies["operator"]["ok"] is True, replies["operator"]
    [done] = [a for a in await hive.approvals.list(pending_only=False) if a.id == pending.id]
    assert done.status == "approved" and done.fetched_sha == sha
    assert f"deployed/{done.id}" in tags(hive, "alice")
    assert hive.config.paths.model_file("alice").read_text().strip() == "sonnet"
