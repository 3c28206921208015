"""The manager changes an agent's configuration from inside its own nspawn container.

Nothing is done for the manager from the host: its real claude (scripted through the mock
Messages API) reads and edits ``/agents/<name>/config/agent.toml`` with its file tools,
commits with git through its Bash tool, and calls ``request_apply_commit`` with the sha git
printed. The operator approves through the host socket; the agent's next turn runs with the
new model. Both agents are spawned while the manager's container is already running, so
their repos appear in its ``/agents`` without a restart. A probe from the manager's shell
shows that nothing else of another agent (credentials, state) is reachable.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hyperhive.client import Client
from hyperhive.config_repo import tag_name
from hyperhive.contract import MANAGER_GIT_NAME, proposed_repo
from hyperhive.protocol import ApprovalInfo, ApprovalReply, ApprovalsReply, Approve, Pending
from hyperhive.registry import AgentState
from hyperhive.supervisor import Hive, open_hive
from tests.conftest import git, kill_leftovers, require_backend

from .fixtures import eventually, for_agent, operator_send
from .mock_anthropic import MockAnthropic, RecordedRequest, Reply, text, tool_result_text, tool_use
from .test_containers_e2e import config, daemon_env, running_with_harness, turned

#: Starts nspawn containers: on a machined host these run one at a time (tests/conftest.py).
pytestmark = pytest.mark.nspawn

__all__ = ["daemon_env"]  # the fixture, used by name

SHA_RE = re.compile(r"^([0-9a-f]{40})$", re.M)
Step = Reply | Callable[[RecordedRequest], Reply]


class Router:
    """``mock.default``: each agent's turns get their own scripted steps.

    A step is used only by a request of that agent whose current prompt holds the turn's
    marker, so an unrelated wake-up of the same agent (an ``approval_resolved`` message)
    never eats a step; everything else is answered ``ok``.
    """

    def __init__(self) -> None:
        self.turns: list[tuple[str, str, list[Step]]] = []

    def turn(self, agent: str, marker: str, *steps: Step) -> None:
        self.turns.append((agent, marker, list(steps)))

    def __call__(self, req: RecordedRequest) -> Reply:
        prompt = req.user_texts[-1] if req.user_texts else ""
        for agent, marker, steps in self.turns:
            if steps and marker in prompt and for_agent(agent)(req):
                step = steps.pop(0)
                return step(req) if callable(step) else step
        return text("ok")

    def done(self, marker: str) -> bool:
        return all(not steps for _, m, steps in self.turns if m == marker)


def last_result(req: RecordedRequest) -> str:
    return tool_result_text(req.tool_results[-1]) if req.tool_results else ""


def apply_commit(agent: str) -> Callable[[RecordedRequest], Reply]:
    """The manager's next step: request_apply_commit with the sha its git command printed."""

    def step(req: RecordedRequest) -> Reply:
        found = SHA_RE.search(last_result(req))
        assert found, f"no sha in the manager's last tool result: {last_result(req)!r}"
        return tool_use(
            "mcp__hyperhive__request_apply_commit",
            {"agent": agent, "commit_ref": found[1], "description": "model change"},
        )

    return step


def commit_and_print_sha(agent: str, message: str) -> Reply:
    repo = proposed_repo(agent)
    return tool_use(
        "Bash",
        {
            "command": f"cd {repo} && git commit -qam '{message}' && git rev-parse HEAD",
            "description": "commit the config change",
        },
    )


def results_of(mock: MockAnthropic, agent: str) -> list[str]:
    """Every tool result the agent's claude sent back (newest conversation)."""
    requests = [r for r in mock.main_requests if for_agent(agent)(r)]
    return [tool_result_text(b) for b in requests[-1].tool_results] if requests else []


async def host_call(hive: Hive, request: Any) -> Any:
    async with await Client.connect(hive.config.paths.host_socket, hello_role="cli") as client:
        return await client.call(request)


async def approve_pending_commit(
    hive: Hive, agent: str, *, expect: str = "approved"
) -> ApprovalInfo:
    """The operator: wait for the manager's apply_commit for ``agent`` and approve it."""

    async def pending() -> Any:
        reply = await host_call(hive, Pending())
        assert isinstance(reply, ApprovalsReply)
        found = [a for a in reply.approvals if a.agent == agent and a.kind == "apply_commit"]
        return found[0] if found else None

    approval = await eventually(pending, within=90, what=f"the manager's apply_commit for {agent}")
    reply = await host_call(hive, Approve(id=approval.id))
    assert isinstance(reply, ApprovalReply)
    assert reply.approval.status == expect, reply.approval.note
    assert reply.approval.fetched_sha is not None
    # The proposal is the manager's own commit, made inside its container.
    applied = hive.config.paths.applied_dir(agent)
    tag = tag_name("proposal", approval.id)
    assert git(applied, "log", "-1", "--format=%an", tag) == MANAGER_GIT_NAME
    return reply.approval


@pytest.fixture
async def nspawn_hive(short_tmp: Path, daemon_env: None) -> AsyncIterator[Hive]:
    require_backend("nspawn")
    try:
        async with open_hive(config(short_tmp, "nspawn")) as hive:
            yield hive
    finally:
        kill_leftovers(short_tmp)


async def test_the_manager_deploys_a_config_from_inside_its_container(
    nspawn_hive: Hive, mock_api: MockAnthropic
) -> None:
    hive = nspawn_hive
    router = Router()
    mock_api.default = router
    await running_with_harness(hive, "manager")
    await hive.spawn("alice")
    await running_with_harness(hive, "alice")

    # Things of alice's the manager must not reach.
    paths = hive.config.paths
    (paths.agent_dir("alice") / "claude" / "canary-claude").write_text("secret")
    (paths.agent_dir("alice") / "state" / "canary-state").write_text("secret")
    alice_toml = proposed_repo("alice") + "/agent.toml"
    probe = (
        "ls -A /agents/alice; echo ---; ls -A /agents; echo ---; "
        f"cat {paths.agent_dir('alice')}/claude/canary-claude; echo ---; "
        "find / -xdev -name 'canary-*' 2>/dev/null; "
        "find /agents /state /root /run/hive -name 'canary-*' 2>&1; echo END"
    )
    router.turn(
        "manager",
        "deploy-alice",
        tool_use("Bash", {"command": probe, "description": "look around"}),
        tool_use("Read", {"file_path": alice_toml}),
        tool_use(
            "Edit",
            {
                "file_path": alice_toml,
                "old_string": 'model = "haiku"',
                "new_string": 'model = "sonnet"',
            },
        ),
        commit_and_print_sha("alice", "alice: sonnet"),
        apply_commit("alice"),
        text("asked the operator"),
    )
    await operator_send(paths.host_socket, "manager", "deploy-alice: alice should use sonnet")
    sha = (await approve_pending_commit(hive, "alice")).fetched_sha
    assert sha is not None
    await eventually(lambda: router.done("deploy-alice"), what="the manager's scripted turn")

    results = results_of(mock_api, "manager")
    probe_out = next(r for r in results if r.rstrip().endswith("END"))
    listing, agents, cat, found = (part.strip() for part in probe_out.split("---", 3))
    assert listing == "config", probe_out
    assert set(agents.split()) == {"alice", "manager"}, probe_out
    assert "No such file or directory" in cat and "secret" not in cat, probe_out
    assert "canary" not in found.removesuffix("END"), probe_out
    assert any('model = "haiku"' in r for r in results)  # the Read
    assert any(sha in r for r in results)  # git printed the sha it proposed
    # /agents is one of claude's working directories (its settings): a cd there is kept.
    assert not [r for r in results if "cwd was reset" in r], results
    # What told the manager where the repos are: its system prompt and the tool's text.
    first = next(r for r in mock_api.main_requests if for_agent("manager")(r))
    described = {t.get("name"): t.get("description", "") for t in first.tools}
    assert proposed_repo("<agent>") in described["mcp__hyperhive__request_apply_commit"]
    assert proposed_repo("<name>") in first.system_text

    await running_with_harness(hive, "alice")
    assert "sonnet" in await turned(hive, mock_api, "alice", "alice-after: hi")

    # An invalid config fails its deploy and leaves alice running as she was.
    pid = hive.registry.get("alice").pid
    router.turn(
        "manager",
        "break-alice",
        tool_use(
            "Bash",
            {"command": f"sed -i 's/^memory_max = .*/memory_max = 7/' {alice_toml}"},
        ),
        commit_and_print_sha("alice", "alice: bad"),
        apply_commit("alice"),
        text("asked the operator"),
    )
    await operator_send(hive.config.paths.host_socket, "manager", "break-alice: try this")
    failed = await approve_pending_commit(hive, "alice", expect="failed")
    assert "memory_max" in (failed.note or "")
    assert hive.registry.get("alice").pid == pid
    assert hive.registry.get("alice").state == AgentState.RUNNING
    assert "sonnet" in await turned(hive, mock_api, "alice", "alice-still: hi")

    # The decision reached the manager as approval_resolved.
    def told() -> bool:
        prompts = {
            t
            for r in mock_api.main_requests
            if for_agent("manager")(r)
            for t in r.user_texts
            if "approval_resolved" in t
        }
        return len(prompts) >= 2

    await eventually(told, within=60, what="approval_resolved for both to the manager")


async def test_the_repo_of_an_agent_spawned_later_appears_without_a_manager_restart(
    nspawn_hive: Hive, mock_api: MockAnthropic
) -> None:
    hive = nspawn_hive
    router = Router()
    mock_api.default = router
    # The manager's container runs before bob exists.
    await running_with_harness(hive, "manager")
    manager_pid = hive.registry.get("manager").pid
    await hive.spawn("bob")
    await running_with_harness(hive, "bob")

    bob_toml = proposed_repo("bob") + "/agent.toml"

    def rewrite(req: RecordedRequest) -> Reply:
        current = last_result(req)
        assert 'model = "haiku"' in current, current
        return tool_use("Write", {"file_path": bob_toml, "content": 'model = "opus"\n'})

    router.turn(
        "manager",
        "deploy-bob",
        tool_use("Read", {"file_path": bob_toml}),
        rewrite,
        commit_and_print_sha("bob", "bob: opus"),
        apply_commit("bob"),
        text("asked the operator"),
    )
    await operator_send(hive.config.paths.host_socket, "manager", "deploy-bob: bob, use opus")
    await approve_pending_commit(hive, "bob")
    await eventually(lambda: router.done("deploy-bob"), what="the manager's scripted turn")
    await running_with_harness(hive, "bob")
    assert "opus" in await turned(hive, mock_api, "bob", "bob-after: hi")
    assert hive.registry.get("manager").pid == manager_pid
