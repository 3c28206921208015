"""Placement, adoption, approvals and config deploys across nodes: three ``hyperhive run``
processes (na, nb, nc) on one PostgreSQL database. na starts first and holds the manager.

Each actor acts through its own interface: the operator through a node's CLI or host
socket, the manager through its socket on na, an agent through its socket on its node."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import trio

from hyperhive.client import Client
from hyperhive.config import DEPLOY_WAIT_SECONDS
from tests.conftest import DaemonProcess, git, propose_config, wait_until
from tests.multinode import running_nodes

NODES = ["na", "nb", "nc"]


async def cli(node: DaemonProcess, *args: str) -> dict[str, Any]:
    """``hyperhive <args> --json`` against ``node``'s host socket, as the operator types it."""
    done = await trio.run_process(
        [sys.executable, "-m", "hyperhive", *args, "--run-dir", str(node.paths.run_dir), "--json"],
        env=node.env,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()
    reply: dict[str, Any] = json.loads(done.stdout)
    return reply


async def listed(node: DaemonProcess) -> dict[str, dict[str, Any]]:
    reply = await node.call({"cmd": "list"})
    assert reply["ok"], reply
    return {agent["name"]: agent for agent in reply["agents"]}


async def served_on(nodes: dict[str, DaemonProcess], name: str, where: str) -> None:
    """Until ``name`` is served (socket, ``registered``, no transient) on ``where`` only."""

    async def ready() -> bool:
        agent = (await listed(nodes[where])).get(name)
        return (
            nodes[where].paths.agent_socket(name).exists()
            and agent is not None
            and agent["state"] == "registered"
            and agent["transient"] is None
        )

    await wait_until(ready, limit=20, interval=0.05)
    for other, node in nodes.items():
        if other != where:
            assert not node.paths.agent_socket(name).exists(), (name, other)


async def alice_on_nb_proposes(nodes: dict[str, DaemonProcess], toml: str) -> dict[str, Any]:
    """Alice placed on nb (from na); the manager (on na) commits ``toml`` in her proposed
    repo there (the git step only, as in tests/test_approvals.py) and asks for its
    apply_commit through its own socket. Returns the manager's reply."""
    na = nodes["na"]
    assert (await na.call({"cmd": "spawn", "name": "alice", "node": "nb"}))["ok"]
    await served_on(nodes, "alice", "nb")

    async def proposed_on_na() -> bool:
        return (na.paths.proposed_dir("alice") / ".git").is_dir()

    await wait_until(proposed_on_na, limit=20, interval=0.05)
    return await manager_proposes(na, "alice", toml)


async def manager_proposes(na: DaemonProcess, agent: str, toml: str) -> dict[str, Any]:
    """The manager (on na) commits ``toml`` in ``agent``'s proposed repo there (the git
    step only, as in tests/test_approvals.py) and asks for its apply_commit through its own
    socket. Returns the manager's reply (recorded, the proposal fetched)."""
    sha = propose_config(na.paths, agent, toml)
    async with await Client.connect(na.paths.agent_socket("manager")) as manager:
        asked = await manager.request(
            {"cmd": "request_apply_commit", "agent": agent, "commit_ref": sha}
        )
    assert asked["ok"] and asked["approval"]["fetched_sha"] == sha, asked
    return asked


async def hello_as(node: DaemonProcess, name: str) -> dict[str, Any]:
    """The agent says hello through its socket on its node."""
    async with await Client.connect(node.paths.agent_socket(name), hello_role="cli") as client:
        reply: dict[str, Any] = await client.request({"cmd": "get_agent_meta"})
    return reply


async def test_spawn_goes_to_the_named_node_or_the_one_with_the_fewest_agents(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery
) -> None:
    async with running_nodes(short_tmp, pg_url, NODES, nursery) as nodes:
        na, nb, nc = nodes["na"], nodes["nb"], nodes["nc"]
        # The operator on na places alice on nb.
        spawned = await cli(na, "spawn", "alice", "--node", "nb")
        assert spawned["agent"]["node"] == "nb"
        await served_on(nodes, "alice", "nb")
        meta = await hello_as(nb, "alice")
        assert meta["ok"] and meta["name"] == "alice", meta
        for node in nodes.values():
            assert (await listed(node))["alice"]["node"] == "nb"
        # nb made its dirs and repos; na (the manager's node) has its proposed repo too.
        assert (nb.paths.applied_dir("alice") / ".git").is_dir()
        assert not nc.paths.applied_dir("alice").exists()

        async def proposed_on_na() -> bool:
            return (na.paths.proposed_dir("alice") / ".git").is_dir()

        await wait_until(proposed_on_na, limit=20, interval=0.05)

        # Unnamed: na has the manager, nb alice, nc nothing: nc. Then all have one: na.
        bob = await nb.call({"cmd": "spawn", "name": "bob"})
        assert bob["ok"] and bob["agent"]["node"] == "nc", bob
        await served_on(nodes, "bob", "nc")
        carol = await nc.call({"cmd": "spawn", "name": "carol"})
        assert carol["ok"] and carol["agent"]["node"] == "na", carol
        await served_on(nodes, "carol", "na")

        # A node nobody runs is refused, and so is a name that is no node name.
        unknown = await na.call({"cmd": "spawn", "name": "dave", "node": "nz"})
        assert unknown["ok"] is False and "no node named 'nz'" in unknown["error"]
        bad = await na.call({"cmd": "spawn", "name": "dave", "node": "Not A Node"})
        assert bad["ok"] is False and "invalid node name" in bad["error"]
        assert "dave" not in await listed(na)


async def test_an_approval_made_on_one_node_spawns_on_the_placed_node(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery
) -> None:
    async with running_nodes(short_tmp, pg_url, NODES, nursery) as nodes:
        na, nb, nc = nodes["na"], nodes["nb"], nodes["nc"]
        # The manager asks, through its own socket on its node, for dave on nb.
        async with await Client.connect(na.paths.agent_socket("manager")) as manager:
            asked = await manager.request(
                {"cmd": "request_spawn", "name": "dave", "description": "x", "node": "nb"}
            )
            assert asked["ok"] and asked["approval"]["node"] == "nb", asked
            refused = await manager.request(
                {"cmd": "request_spawn", "name": "erin", "node": "nowhere"}
            )
            assert refused["ok"] is False and "no node named" in refused["error"]
        # The operator approves it on nc.
        approved = await cli(nc, "approve", str(asked["approval"]["id"]))
        assert approved["approval"]["status"] == "approved", approved
        await served_on(nodes, "dave", "nb")
        assert (await hello_as(nb, "dave"))["name"] == "dave"
        assert (await listed(nc))["dave"]["node"] == "nb"

        # The manager's node, neither the approving nor the agent's, seeds its proposed repo.
        async def proposed_on_na() -> bool:
            return (na.paths.proposed_dir("dave") / ".git").is_dir()

        await wait_until(proposed_on_na, limit=20, interval=0.05)
        assert not (nc.paths.proposed_dir("dave") / ".git").exists()

        # The operator's request on nc for nb, approved on na.
        asked = await cli(nc, "request-spawn", "erin", "--node", "nb")
        approved = await na.call({"cmd": "approve", "id": asked["approval"]["id"]})
        assert approved["ok"] and approved["approval"]["status"] == "approved", approved
        await served_on(nodes, "erin", "nb")

        # Destroyed on its node, revived by an approval made on nc: back on nb.
        assert (await nb.call({"cmd": "destroy", "name": "erin"}))["ok"]

        async def gone() -> bool:
            tombstones = (await nc.call({"cmd": "tombstones"}))["tombstones"]
            return "erin" in {t["name"] for t in tombstones}

        await wait_until(gone, limit=20, interval=0.05)
        revive = await nc.call({"cmd": "revive", "name": "erin"})
        assert revive["ok"], revive
        again = await nc.call({"cmd": "approve", "id": revive["approval"]["id"]})
        assert again["ok"] and again["approval"]["status"] == "approved", again
        await served_on(nodes, "erin", "nb")


async def test_an_apply_commit_approved_on_another_node_is_deployed_on_the_agents_node(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery
) -> None:
    async with running_nodes(short_tmp, pg_url, NODES, nursery) as nodes:
        na, nb, nc = nodes["na"], nodes["nb"], nodes["nc"]
        good_toml = 'model = "sonnet"\n'
        asked = await alice_on_nb_proposes(nodes, good_toml)
        sha = asked["approval"]["fetched_sha"]
        approval_id = asked["approval"]["id"]

        # The operator approves on nc; nb deploys it and the outcome comes back.
        approved = await nc.call({"cmd": "approve", "id": approval_id})
        assert approved["ok"] and approved["approval"]["status"] == "approved", approved
        applied = nb.paths.applied_dir("alice")
        assert (applied / "agent.toml").read_text() == good_toml
        message = git(applied, "log", "-1", "--format=%B", "main")
        assert f"approval {approval_id}" in message and sha in message
        tags = set(git(applied, "tag", "-l").split())
        assert {f"proposal/{approval_id}", f"approved/{approval_id}"} <= tags
        assert f"deployed/{approval_id}" in tags
        assert nb.paths.model_file("alice").read_text().strip() == "sonnet"
        # Every node sees the outcome; the agent reads its new model through its socket.
        for node in nodes.values():
            history = await node.call({"cmd": "approvals", "include_resolved": True})
            [seen] = [a for a in history["approvals"] if a["id"] == approval_id]
            assert seen["status"] == "approved"
        assert (await hello_as(nb, "alice"))["model"] == "sonnet"

        # A config that does not validate fails with the reason; nb keeps the last one.
        before = git(applied, "rev-parse", "main")
        asked = await manager_proposes(na, "alice", "cpu_quota = 5\n")
        failed = await nc.call({"cmd": "approve", "id": asked["approval"]["id"]})
        assert failed["ok"] and failed["approval"]["status"] == "failed", failed
        assert "cpu_quota" in failed["approval"]["note"]
        assert git(applied, "rev-parse", "main") == before
        assert (applied / "agent.toml").read_text() == good_toml
        assert f"failed/{asked['approval']['id']}" in git(applied, "tag", "-l").split()

        # Approved on the agent's own node (the manager's is another): deployed there from
        # the database all the same.
        asked = await manager_proposes(na, "alice", 'model = "haiku"\n')
        third = asked["approval"]["fetched_sha"]
        here = await nb.call({"cmd": "approve", "id": asked["approval"]["id"]})
        assert here["ok"] and here["approval"]["status"] == "approved", here
        assert (applied / "agent.toml").read_text() == 'model = "haiku"\n'
        assert third in git(applied, "log", "-1", "--format=%B", "main")


async def test_a_node_back_from_down_adopts_its_new_agent_and_deploys_its_approved_config(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery
) -> None:
    async with running_nodes(short_tmp, pg_url, NODES, nursery) as nodes:
        na, nb, nc = nodes["na"], nodes["nb"], nodes["nc"]
        toml = 'model = "haiku"\n'
        asked = await alice_on_nb_proposes(nodes, toml)

        await nb.kill()
        # Placed on nb while it is down: its row waits there, spawning.
        bob = await na.call({"cmd": "spawn", "name": "bob", "node": "nb"})
        assert bob["ok"] and bob["agent"]["transient"] == "spawning", bob
        # Approved on nc while alice's node is down: not back in time, the reply says
        # where it is being deployed, and the approval stays pending.
        approval_id = asked["approval"]["id"]
        with trio.fail_after(DEPLOY_WAIT_SECONDS + 15):
            waiting = await nc.call({"cmd": "approve", "id": approval_id})
        assert waiting["ok"], waiting
        assert waiting["approval"]["status"] == "pending"
        assert waiting["approval"]["note"] == "deploying on node nb"
        assert waiting["approval"]["node"] == "nb"
        denied = await na.call({"cmd": "deny", "id": approval_id})
        assert denied["ok"] is False and "being carried out" in denied["error"]

        await nb.start(nursery)

        async def deployed() -> bool:
            history = await nc.call({"cmd": "approvals", "include_resolved": True})
            [seen] = [a for a in history["approvals"] if a["id"] == approval_id]
            return bool(seen["status"] == "approved")

        await wait_until(deployed, limit=30, interval=0.1)
        assert (nb.paths.applied_dir("alice") / "agent.toml").read_text() == toml
        await served_on(nodes, "bob", "nb")
        assert (nb.paths.applied_dir("bob") / ".git").is_dir()
