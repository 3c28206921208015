"""The proposed config repos' own tree, ``<state>/proposed/<name>/config``.

Its migration from ``<state>/agents/<name>/config``, the refusal of paths the manager
replaced by symlinks, and what the backends hand the manager (the tree as ``/agents`` in its
container, its host path without one). The manager's workflow in it is tested end to end in
tests/harness/test_manager_config.py.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from hyperhive import contract
from hyperhive.agent_setup import check_proposed, migrate_proposed_repos, prepare_agent_repos
from hyperhive.config import Config, Paths
from hyperhive.config_repo import ensure_repos
from hyperhive.containers import AgentSpec, NspawnBackend, ProcessBackend
from hyperhive.errors import RequestRefused
from hyperhive.registry import AgentState
from hyperhive.supervisor import Hive, open_hive
from tests.conftest import git, kill_leftovers, make_paths, need, process_alive
from tests.test_containers import config as container_config
from tests.test_containers import wait_state

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return make_paths(tmp_path)


async def old_layout_repo(paths: Paths, name: str, toml: str | None = None) -> str:
    """A repo where older versions kept it; its HEAD."""
    old = paths.agent_dir(name) / "config"
    await ensure_repos(old, paths.applied_dir(name))
    if toml is not None:
        (old / "agent.toml").write_text(toml)
        git(old, "commit", "-qam", "earlier change")
    return git(old, "rev-parse", "HEAD")


async def test_migration_moves_each_repo_once(paths: Paths) -> None:
    head = await old_layout_repo(paths, "alice", 'model = "sonnet"\n')
    (paths.agent_dir("alice") / "state").mkdir()
    (paths.agent_dir("alice") / "state" / "notes.md").write_text("kept")
    (paths.state_dir / "agents" / "Not-A-Name").mkdir()
    (paths.state_dir / "agents" / "Not-A-Name" / "config").mkdir()

    assert migrate_proposed_repos(paths) == ["alice"]
    assert git(paths.proposed_dir("alice"), "rev-parse", "HEAD") == head
    assert git(paths.proposed_dir("alice"), "status", "--porcelain") == ""
    assert not (paths.agent_dir("alice") / "config").exists()
    assert (paths.agent_dir("alice") / "state" / "notes.md").read_text() == "kept"
    assert (paths.state_dir / "agents" / "Not-A-Name" / "config").is_dir()  # not ours
    # Again (a restart, or a start after a crash part-way): nothing left to do.
    assert migrate_proposed_repos(paths) == []
    assert git(paths.proposed_dir("alice"), "rev-parse", "HEAD") == head


async def test_migration_finishes_a_half_done_tree(paths: Paths) -> None:
    # alice: moved already, an empty leftover at the old place (older versions made one).
    moved = await old_layout_repo(paths, "alice")
    paths.proposed_dir("alice").parent.mkdir(parents=True)
    os.rename(paths.agent_dir("alice") / "config", paths.proposed_dir("alice"))
    (paths.agent_dir("alice") / "config").mkdir()
    # bob: not moved yet, an empty directory waiting at the new place.
    bob = await old_layout_repo(paths, "bob")
    paths.proposed_dir("bob").mkdir(parents=True)
    # carol: a repo at both places is never overwritten.
    await old_layout_repo(paths, "carol", 'model = "opus"\n')
    await ensure_repos(paths.proposed_dir("carol"), paths.applied_dir("carol"))

    assert migrate_proposed_repos(paths) == ["bob"]
    assert git(paths.proposed_dir("alice"), "rev-parse", "HEAD") == moved
    assert not (paths.agent_dir("alice") / "config").exists()
    assert git(paths.proposed_dir("bob"), "rev-parse", "HEAD") == bob
    assert 'model = "opus"' in (paths.agent_dir("carol") / "config" / "agent.toml").read_text()
    assert (paths.proposed_dir("carol") / ".git").is_dir()


async def test_the_daemon_migrates_at_start(paths: Paths) -> None:
    head = await old_layout_repo(paths, "manager", 'model = "sonnet"\n')
    async with open_hive(Config(paths=paths, backend="external")):
        # The manager's repo moved, with its history: not re-seeded beside it.
        assert git(paths.proposed_dir("manager"), "rev-parse", "HEAD") == head
        assert not (paths.agent_dir("manager") / "config").exists()
        assert sorted(p.name for p in paths.proposed_root.iterdir()) == ["manager"]
        assert [p.name for p in paths.proposed_dir("manager").parent.iterdir()] == ["config"]


async def test_symlinks_in_the_tree_are_not_followed(paths: Paths, tmp_path: Path) -> None:
    """The manager can rewrite its /agents tree; the daemon must not follow it elsewhere."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    paths.proposed_root.mkdir(parents=True)
    (paths.proposed_root / "alice").symlink_to(elsewhere)
    with pytest.raises(RequestRefused, match="not a plain directory"):
        await prepare_agent_repos(paths, "alice", "model = 'haiku'\n")
    assert list(elsewhere.iterdir()) == []

    (paths.proposed_root / "bob").mkdir()
    (paths.proposed_root / "bob" / "config").symlink_to(elsewhere)
    with pytest.raises(RequestRefused, match="not a plain directory"):
        check_proposed(paths, "bob")
    assert check_proposed(paths, "carol") == paths.proposed_dir("carol")


async def test_git_redirections_in_a_proposed_repo_are_refused(
    paths: Paths, tmp_path: Path
) -> None:
    """Pointers that would make the daemon's fetch read another repo on the host."""
    other = tmp_path / "other"
    await ensure_repos(other / "config", other / "applied")
    await prepare_agent_repos(paths, "alice", "model = 'haiku'\n")
    repo = paths.proposed_dir("alice")
    assert check_proposed(paths, "alice") == repo
    git_dir = repo / ".git"

    alternates = git_dir / "objects" / "info" / "alternates"
    alternates.parent.mkdir(exist_ok=True)
    alternates.write_text(f"{other / 'config' / '.git' / 'objects'}\n")
    with pytest.raises(RequestRefused, match="another repository"):
        check_proposed(paths, "alice")
    alternates.unlink()

    shutil.rmtree(git_dir / "objects")
    (git_dir / "objects").symlink_to(other / "config" / ".git" / "objects")
    with pytest.raises(RequestRefused, match="not a plain directory"):
        check_proposed(paths, "alice")

    shutil.rmtree(git_dir)
    git_dir.write_text(f"gitdir: {other / 'config' / '.git'}\n")  # a gitfile
    with pytest.raises(RequestRefused, match="not a plain directory"):
        check_proposed(paths, "alice")


def spec(paths: Paths, name: str, agents_dir: Path | None) -> AgentSpec:
    agent_dir = paths.agent_dir(name)
    return AgentSpec(
        name=name,
        role="manager" if name == "manager" else "agent",
        socket_dir=paths.agent_socket(name).parent,
        state_dir=agent_dir / "state",
        claude_dir=agent_dir / "claude",
        log_file=agent_dir / "logs" / "container.log",
        command=("true",),
        agents_dir=agents_dir,
    )


def test_only_the_manager_container_gets_the_tree(paths: Paths) -> None:
    need(shutil.which("systemd-nspawn") is not None, "systemd-nspawn (systemd-container)")
    backend = NspawnBackend()
    manager = backend.argv(spec(paths, "manager", paths.proposed_root))
    assert f"--bind={paths.proposed_root}:/agents" in manager
    assert "--setenv=HYPERHIVE_AGENTS_DIR=/agents" in manager
    assert "--setenv=GIT_CONFIG_KEY_0=safe.directory" in manager
    assert "--setenv=GIT_CONFIG_VALUE_0=*" in manager
    assert f"--setenv=GIT_AUTHOR_NAME={contract.MANAGER_GIT_NAME}" in manager
    settings = next(a for a in manager if a.startswith("--setenv=HYPERHIVE_CLAUDE_SETTINGS="))
    document = json.loads(settings.split("=", 2)[2])
    assert document == {"permissions": {"additionalDirectories": ["/agents"]}}

    alice = backend.argv(spec(paths, "alice", None))
    assert not [a for a in alice if "/agents" in a.split(":")[-1] or "AGENTS_DIR" in a]
    assert not [a for a in alice if "GIT_" in a or str(paths.proposed_root) in a]


def test_the_process_backend_hands_over_the_host_path(paths: Paths) -> None:
    env = ProcessBackend().environment(spec(paths, "manager", paths.proposed_root))
    assert env[contract.AGENTS_DIR_ENV] == str(paths.proposed_root)
    settings = json.loads(env["HYPERHIVE_CLAUDE_SETTINGS"])
    assert settings["permissions"]["additionalDirectories"] == [str(paths.proposed_root)]
    assert contract.AGENTS_DIR_ENV not in ProcessBackend().environment(spec(paths, "bob", None))


async def test_a_spawn_over_a_planted_symlink_is_refused(hive: Hive, tmp_path: Path) -> None:
    """A name taken in /agents before its spawn: refused, nothing written through it."""
    root = hive.config.paths.proposed_root
    (root / "carol").symlink_to(tmp_path / "missing")
    (root / "dave").symlink_to(tmp_path)
    for name in ("carol", "dave"):
        with pytest.raises(RequestRefused, match="not a plain directory"):
            await hive.spawn(name)
    assert not (tmp_path / "missing").exists()
    assert not (tmp_path / "config").exists()


async def test_the_daemon_gives_the_tree_to_the_manager_only(hive: Hive) -> None:
    await hive.spawn("alice")
    assert (await hive._spec_for("manager")).agents_dir == hive.config.paths.proposed_root
    assert (await hive._spec_for("alice")).agents_dir is None
    # The tree holds each agent's repo and nothing else of it.
    root = hive.config.paths.proposed_root
    assert sorted(p.name for p in root.iterdir()) == ["alice", "manager"]
    assert [p.name for p in (root / "alice").iterdir()] == ["config"]
    assert (root / "alice" / "config" / ".git").is_dir()


async def test_an_upgrade_restarts_a_readopted_manager(short_tmp: Path) -> None:
    """A manager container from before the move lacks /agents; one started after has it."""
    paths = make_paths(short_tmp)
    try:
        async with open_hive(container_config(short_tmp, "process", stop=False)) as hive:
            await wait_state(hive, "manager", AgentState.RUNNING)
            old_pid = hive.registry.get("manager").pid
        await old_layout_repo(paths, "alice")  # what an older version left behind
        async with open_hive(container_config(short_tmp, "process", stop=False)) as hive:
            assert (paths.proposed_dir("alice") / ".git").is_dir()
            await wait_state(hive, "manager", AgentState.RUNNING)
            new_pid = hive.registry.get("manager").pid
            assert new_pid != old_pid and process_alive(new_pid) and not process_alive(old_pid)
        # Nothing left to move: the running manager is re-adopted as usual.
        async with open_hive(container_config(short_tmp, "process", stop=True)) as hive:
            assert hive.registry.get("manager").pid == new_pid
    finally:
        kill_leftovers(short_tmp)
