"""``hyperhive approvals --all`` and ``questions --all``: decided ones, with who and when."""

from __future__ import annotations

import time

from hyperhive.client import Client
from tests.conftest import DaemonProcess
from tests.test_cli import cli


async def test_approvals_all_shows_status_note_who_and_when(daemon: DaemonProcess) -> None:
    before = time.time()
    for name in ("bob", "carol", "dave"):
        assert (await cli(daemon, "request-spawn", name, "--description", f"hire {name}")).code == 0
    ids = {
        a["agent"]: a["id"] for a in (await cli(daemon, "pending", "--json")).json()["approvals"]
    }
    assert (await cli(daemon, "approve", str(ids["bob"]))).code == 0
    assert (await cli(daemon, "deny", str(ids["carol"]), "--note", "not now")).code == 0

    r = await cli(daemon, "approvals")  # without --all: only what waits
    assert r.code == 0
    assert [line.split()[2] for line in r.out.splitlines()[1:]] == ["dave"]

    r = await cli(daemon, "approvals", "--all", "--json")
    assert r.code == 0
    got = {a["agent"]: a for a in r.json()["approvals"]}
    assert got["bob"]["status"] == "approved" and got["bob"]["decided_by"] == "operator"
    assert got["carol"]["status"] == "denied" and got["carol"]["note"] == "not now"
    assert got["carol"]["decided_by"] == "operator"
    for decided in (got["bob"], got["carol"]):
        assert before <= decided["resolved_at"] <= time.time()
    assert got["dave"]["status"] == "pending"
    assert got["dave"]["decided_by"] is None and got["dave"]["resolved_at"] is None

    r = await cli(daemon, "approvals", "--all")
    lines = r.out.splitlines()
    assert lines[0].split()[:5] == ["ID", "KIND", "AGENT", "STATUS", "DECIDED"]
    rows = {line.split()[2]: line for line in lines[1:]}
    assert "denied" in rows["carol"] and "operator" in rows["carol"]
    assert rows["carol"].endswith("not now") and " ago" in rows["carol"]
    assert "pending" in rows["dave"] and rows["dave"].endswith("hire dave")


async def test_questions_all_shows_answers_and_who_answered(daemon: DaemonProcess) -> None:
    async with await Client.connect(daemon.paths.agent_socket("manager")) as manager:
        first = await manager.request({"cmd": "ask", "question": "Ship it?", "options": ["y", "n"]})
        await manager.request({"cmd": "ask", "question": "Lunch?"})
    assert (await cli(daemon, "answer", str(first["id"]), "y")).code == 0

    r = await cli(daemon, "questions")
    assert [line.split()[0] for line in r.out.splitlines()[1:]] == [str(first["id"] + 1)]
    r = await cli(daemon, "questions", "--all")
    lines = r.out.splitlines()
    assert lines[0].split() == [
        "ID",
        "ASKER",
        "TO",
        "ASKED",
        "ANSWERED",
        "BY",
        "ANSWER",
        "QUESTION",
    ]
    rows = {line.split()[0]: line for line in lines[1:]}
    answered = rows[str(first["id"])].split()
    assert answered[answered.index("operator", 3) :] == ["operator", "y", "Ship", "it?"]
    assert "(open)" in rows[str(first["id"] + 1)]
