"""The functions of hyperhive/config_repo.py on real git in temporary directories.

These test the git plumbing, so the tests commit into the proposed repo themselves. The
manager's own workflow (editing and committing from inside its container) is tested end to
end in tests/harness/test_manager_config.py.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import trio

from hyperhive import config_repo
from hyperhive.agent_config import SEED_AGENT_TOML, AgentConfig, InvalidAgentConfig
from hyperhive.agent_config import parse_agent_config as parse
from hyperhive.config_repo import (
    applied_config,
    applied_main,
    approve_proposal,
    diff_proposal,
    ensure_repos,
    fetch_proposal,
    mark_denied,
    mark_deployed,
    mark_failed,
    read_proposed_config,
    recorded_outcome,
)
from hyperhive.errors import RequestRefused

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

SONNET = SEED_AGENT_TOML.replace('model = "haiku"', 'model = "sonnet"')
OPUS = SEED_AGENT_TOML.replace('model = "haiku"', 'model = "opus"')


def manager_env() -> dict[str, str]:
    """No global git config and no identity in the environment: the repo-local identity of
    a new proposed repo has to be enough to commit there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1", LC_ALL="C")
    return env


async def git(repo: Path, *args: str) -> str:
    proc = await trio.run_process(
        ["git", "-C", str(repo), *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=manager_env(),
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode().strip()


async def commit(repo: Path, text: str | None, message: str = "change", *extra: str) -> str:
    """Commit a new agent.toml in a repo (input for the function under test); the new sha."""
    if text is not None:
        (repo / "agent.toml").write_text(text)
    await git(repo, "commit", "--quiet", "--allow-empty", "-a", "-m", message, *extra)
    return await git(repo, "rev-parse", "HEAD")


async def tag_sha(applied: Path, tag: str) -> str | None:
    proc = await trio.run_process(
        ["git", "-C", str(applied), "rev-parse", "--verify", "--quiet", f"refs/tags/{tag}^{{}}"],
        capture_stdout=True,
        check=False,
        env=manager_env(),
    )
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


async def tag_type_and_message(applied: Path, tag: str) -> tuple[str, str]:
    kind = await git(applied, "cat-file", "-t", f"refs/tags/{tag}")
    message = await git(applied, "for-each-ref", "--format=%(contents)", f"refs/tags/{tag}")
    return kind, message


@pytest.fixture
async def repos(tmp_path: Path) -> tuple[Path, Path]:
    proposed = tmp_path / "proposed" / "alice" / "config"
    applied = tmp_path / "applied" / "alice"
    await ensure_repos(proposed, applied)
    return proposed, applied


async def test_ensure_seeds_both_repos_at_one_commit(repos: tuple[Path, Path]) -> None:
    proposed, applied = repos
    seed = await git(proposed, "rev-parse", "HEAD")
    assert await git(proposed, "symbolic-ref", "HEAD") == "refs/heads/main"
    assert await git(proposed, "rev-list", "--count", "HEAD") == "1"
    assert await git(proposed, "show", "HEAD:agent.toml") == SEED_AGENT_TOML.strip()
    assert (proposed / "agent.toml").read_text() == SEED_AGENT_TOML
    assert await applied_main(applied) == seed
    assert await git(applied, "symbolic-ref", "HEAD") == "refs/heads/main"
    assert (applied / "agent.toml").read_text() == SEED_AGENT_TOML
    assert await applied_config(applied) == AgentConfig()
    assert await git(applied, "status", "--porcelain") == ""
    assert not list(proposed.parent.glob(".*seeding"))


async def test_ensure_is_idempotent(repos: tuple[Path, Path]) -> None:
    proposed, applied = repos
    seed = await applied_main(applied)
    await ensure_repos(proposed, applied)
    assert await git(proposed, "rev-list", "--all", "--count") == "1"
    assert await applied_main(applied) == seed
    # Later work of the manager is left alone too.
    head = await commit(proposed, SONNET)
    await ensure_repos(proposed, applied)
    assert await git(proposed, "rev-parse", "HEAD") == head
    assert await applied_main(applied) == seed


async def test_ensure_into_an_existing_empty_dir(tmp_path: Path) -> None:
    proposed, applied = tmp_path / "config", tmp_path / "applied"
    proposed.mkdir()
    applied.mkdir()
    await ensure_repos(proposed, applied)
    assert await git(proposed, "rev-parse", "HEAD") == await applied_main(applied)


async def test_ensure_refuses_a_dir_that_is_not_a_repo(tmp_path: Path) -> None:
    proposed, applied = tmp_path / "config", tmp_path / "applied"
    proposed.mkdir()
    (proposed / "notes.txt").write_text("mine")
    with pytest.raises(RequestRefused, match="exists but is not a git repository"):
        await ensure_repos(proposed, applied)
    assert (proposed / "notes.txt").read_text() == "mine"


async def test_a_lost_proposed_repo_is_recreated_from_applied(repos: tuple[Path, Path]) -> None:
    proposed, applied = repos
    await commit(proposed, SONNET)
    sha = await fetch_proposal(proposed, applied, await git(proposed, "rev-parse", "HEAD"), 1)
    await approve_proposal(applied, 1)
    shutil.rmtree(proposed)
    await ensure_repos(proposed, applied)
    assert await git(proposed, "rev-parse", "HEAD") == sha
    assert await git(proposed, "remote") == ""
    assert await git(proposed, "config", "user.name") == "hyperhive"


async def test_a_lost_applied_repo_restarts_at_the_seed(repos: tuple[Path, Path]) -> None:
    """Never at the manager's unapproved work."""
    proposed, applied = repos
    seed = await applied_main(applied)
    await commit(proposed, SONNET)
    shutil.rmtree(applied)
    await ensure_repos(proposed, applied)
    assert await applied_main(applied) == seed
    assert (await applied_config(applied)).model == "haiku"


async def test_apply_a_model_change(repos: tuple[Path, Path]) -> None:
    proposed, applied = repos
    seed = await applied_main(applied)
    head = await commit(proposed, SONNET)

    sha = await fetch_proposal(proposed, applied, head[:7], 1)
    assert sha == head
    assert await tag_sha(applied, "proposal/1") == head
    assert await git(applied, "for-each-ref", "refs/proposed/") == ""  # scratch refs gone
    assert parse(await read_proposed_config(applied, 1)).model == "sonnet"
    diff = await diff_proposal(applied, 1)
    assert '-model = "haiku"' in diff
    assert '+model = "sonnet"' in diff
    assert await applied_main(applied) == seed  # nothing applied yet

    previous = await approve_proposal(applied, 1)
    assert previous == seed
    assert await applied_main(applied) == head
    assert await tag_sha(applied, "approved/1") == head
    assert (await applied_config(applied)).model == "sonnet"
    assert (applied / "agent.toml").read_text() == SONNET
    assert await diff_proposal(applied, 1) == ""

    await mark_deployed(applied, 1)
    assert await tag_sha(applied, "deployed/1") == head
    assert await applied_main(applied) == head


async def test_an_invalid_proposal_fails_and_main_goes_back(repos: tuple[Path, Path]) -> None:
    proposed, applied = repos
    seed = await applied_main(applied)
    bad = SEED_AGENT_TOML.replace('cpu_quota = "200%"', 'cpu_quota = "2 cores"')
    head = await commit(proposed, bad)
    await fetch_proposal(proposed, applied, head, 1)
    previous = await approve_proposal(applied, 1)
    assert await applied_main(applied) == head

    with pytest.raises(InvalidAgentConfig) as info:
        parse(await read_proposed_config(applied, 1))
    with pytest.raises(InvalidAgentConfig):
        await applied_config(applied)
    assert await mark_failed(applied, 1, previous, str(info.value)) is True

    kind, message = await tag_type_and_message(applied, "failed/1")
    assert kind == "tag"  # annotated
    assert "cpu_quota '2 cores' must look like '200%'" in message
    assert await tag_sha(applied, "failed/1") == head
    assert await applied_main(applied) == seed
    assert (applied / "agent.toml").read_text() == SEED_AGENT_TOML
    assert await applied_config(applied) == AgentConfig()
    with pytest.raises(RequestRefused, match="already failed"):
        await mark_deployed(applied, 1)
    with pytest.raises(RequestRefused, match="already failed"):
        await approve_proposal(applied, 1)


async def test_recorded_outcome_finishes_an_interrupted_failure(repos: tuple[Path, Path]) -> None:
    """A crash between tagging failed/<id> and resetting main: the outcome resets it."""
    proposed, applied = repos
    seed = await applied_main(applied)
    head = await commit(proposed, SONNET)
    await fetch_proposal(proposed, applied, head, 1)
    assert await recorded_outcome(applied, 1) is None
    await approve_proposal(applied, 1)
    await git(applied, "tag", "--annotate", "-m", "rebuild failed", "failed/1", head)
    assert await applied_main(applied) == head

    assert await recorded_outcome(applied, 1) == ("failed", "rebuild failed")
    assert await applied_main(applied) == seed
    assert (applied / "agent.toml").read_text() == SEED_AGENT_TOML
    assert await recorded_outcome(applied, 1) == ("failed", "rebuild failed")

    head2 = await commit(proposed, OPUS)
    await fetch_proposal(proposed, applied, head2, 2)
    await approve_proposal(applied, 2)
    await mark_deployed(applied, 2)
    assert await recorded_outcome(applied, 2) == ("deployed", "")
    assert await applied_main(applied) == head2


async def test_failure_before_approval_leaves_main(repos: tuple[Path, Path]) -> None:
    proposed, applied = repos
    seed = await applied_main(applied)
    head = await commit(proposed, SONNET)
    await fetch_proposal(proposed, applied, head, 1)
    assert await mark_failed(applied, 1, None, "container backend unavailable") is False
    assert await applied_main(applied) == seed
    assert (await tag_type_and_message(applied, "failed/1"))[1] == "container backend unavailable"


async def test_deny_with_and_without_a_note(repos: tuple[Path, Path]) -> None:
    proposed, applied = repos
    seed = await applied_main(applied)
    first = await commit(proposed, SONNET)
    await fetch_proposal(proposed, applied, first, 1)
    await mark_denied(applied, 1, "# too expensive\nuse haiku")
    assert await tag_type_and_message(applied, "denied/1") == ("tag", "# too expensive\nuse haiku")
    assert await tag_sha(applied, "denied/1") == first

    second = await commit(proposed, OPUS)
    await fetch_proposal(proposed, applied, second, 2)
    await mark_denied(applied, 2, None)
    assert await tag_type_and_message(applied, "denied/2") == ("tag", "denied")
    assert await applied_main(applied) == seed
    assert await tag_sha(applied, "approved/1") is None
    with pytest.raises(RequestRefused, match="already denied"):
        await approve_proposal(applied, 2)


async def test_deny_after_approve_is_refused(repos: tuple[Path, Path]) -> None:
    proposed, applied = repos
    head = await commit(proposed, SONNET)
    await fetch_proposal(proposed, applied, head, 1)
    await approve_proposal(applied, 1)
    with pytest.raises(RequestRefused, match="already approved"):
        await mark_denied(applied, 1, "late")
    assert await tag_sha(applied, "denied/1") is None


async def test_proposal_is_immutable_after_the_manager_rewrites(repos: tuple[Path, Path]) -> None:
    proposed, applied = repos
    head = await commit(proposed, SONNET)
    assert await fetch_proposal(proposed, applied, head, 1) == head

    # The manager amends, resets, and throws the old commit away completely.
    (proposed / "agent.toml").write_text(OPUS)
    amended = await commit(proposed, None, "amended", "--amend")
    assert amended != head
    await git(proposed, "reset", "--quiet", "--hard", amended)
    await git(proposed, "reflog", "expire", "--expire=now", "--all")
    await git(proposed, "gc", "--quiet", "--prune=now")
    proc = await trio.run_process(
        ["git", "-C", str(proposed), "cat-file", "-e", head], check=False, env=manager_env()
    )
    assert proc.returncode != 0  # gone from the proposed repo

    assert await tag_sha(applied, "proposal/1") == head
    assert parse(await read_proposed_config(applied, 1)).model == "sonnet"
    await approve_proposal(applied, 1)
    assert (await applied_config(applied)).model == "sonnet"
    # The thrown-away commit cannot be proposed again.
    with pytest.raises(RequestRefused, match="not on any branch"):
        await fetch_proposal(proposed, applied, head, 2)
    assert await tag_sha(applied, "proposal/2") is None


@pytest.mark.parametrize("ref", ["main", "HEAD", "ABCDEF1", "abc123", "v1.0", "a" * 41, "main~1"])
async def test_a_name_instead_of_a_commit_id_is_refused(repos: tuple[Path, Path], ref: str) -> None:
    proposed, applied = repos
    with pytest.raises(RequestRefused, match="is not a commit id: give 7-40 lowercase hex"):
        await fetch_proposal(proposed, applied, ref, 1)
    assert await tag_sha(applied, "proposal/1") is None


async def test_a_hex_branch_name_is_not_taken_for_a_commit(repos: tuple[Path, Path]) -> None:
    proposed, applied = repos
    await commit(proposed, SONNET)
    await git(proposed, "branch", "deadbeef")
    with pytest.raises(RequestRefused, match="commit deadbeef is not in the proposed config repo"):
        await fetch_proposal(proposed, applied, "deadbeef", 1)


async def test_an_unknown_commit_is_refused(repos: tuple[Path, Path]) -> None:
    proposed, applied = repos
    with pytest.raises(RequestRefused, match="commit 0000000 is not in the proposed config repo"):
        await fetch_proposal(proposed, applied, "0000000", 1)
    blob = await git(proposed, "rev-parse", "HEAD:agent.toml")  # an object, not a commit
    with pytest.raises(RequestRefused, match="is not in the proposed config repo"):
        await fetch_proposal(proposed, applied, blob, 1)
    assert await tag_sha(applied, "proposal/1") is None


async def test_refetching_an_id(repos: tuple[Path, Path]) -> None:
    proposed, applied = repos
    first = await commit(proposed, SONNET)
    assert await fetch_proposal(proposed, applied, first, 1) == first
    assert await fetch_proposal(proposed, applied, first[:10], 1) == first
    second = await commit(proposed, OPUS)
    with pytest.raises(RequestRefused, match="tag proposal/1 already exists"):
        await fetch_proposal(proposed, applied, second, 1)
    assert await tag_sha(applied, "proposal/1") == first


async def test_a_non_fast_forward_proposal_is_refused(repos: tuple[Path, Path]) -> None:
    proposed, applied = repos
    seed = await applied_main(applied)
    first = await commit(proposed, SONNET)
    await fetch_proposal(proposed, applied, first, 1)
    await approve_proposal(applied, 1)
    await mark_deployed(applied, 1)

    # The manager starts over from the seed: its next commit does not contain proposal 1.
    await git(proposed, "reset", "--quiet", "--hard", seed)
    other = await commit(proposed, OPUS)
    await fetch_proposal(proposed, applied, other, 2)
    with pytest.raises(RequestRefused, match="does not build on the applied config"):
        await approve_proposal(applied, 2)
    assert await applied_main(applied) == first
    assert await tag_sha(applied, "approved/2") is None
    assert (await applied_config(applied)).model == "sonnet"


async def test_approving_twice_returns_the_same_previous_main(repos: tuple[Path, Path]) -> None:
    proposed, applied = repos
    seed = await applied_main(applied)
    head = await commit(proposed, SONNET)
    await fetch_proposal(proposed, applied, head, 1)
    assert await approve_proposal(applied, 1) == seed
    assert await approve_proposal(applied, 1) == seed
    assert await applied_main(applied) == head
    assert await mark_failed(applied, 1, seed, "boom") is True
    assert await applied_main(applied) == seed


async def test_unknown_approval_and_bad_previous_main(repos: tuple[Path, Path]) -> None:
    proposed, applied = repos
    with pytest.raises(RequestRefused, match="approval 9 has no fetched proposal"):
        await approve_proposal(applied, 9)
    with pytest.raises(RequestRefused, match="approval 9 has no fetched proposal"):
        await read_proposed_config(applied, 9)
    with pytest.raises(RequestRefused, match="approval id must be a positive integer"):
        await mark_denied(applied, 0, None)
    head = await commit(proposed, SONNET)
    await fetch_proposal(proposed, applied, head, 1)
    with pytest.raises(RequestRefused, match="not a full sha"):
        await mark_failed(applied, 1, "main", "x")
    with pytest.raises(RequestRefused, match="is not in"):
        await mark_failed(applied, 1, "0" * 40, "x")
    assert await tag_sha(applied, "failed/1") is None
    with pytest.raises(RequestRefused, match="was not approved"):
        await mark_deployed(applied, 1)


async def test_a_proposal_without_a_regular_agent_toml(repos: tuple[Path, Path]) -> None:
    proposed, applied = repos
    await git(proposed, "rm", "--quiet", "agent.toml")
    gone = await commit(proposed, None, "remove")
    await fetch_proposal(proposed, applied, gone, 1)
    with pytest.raises(RequestRefused, match=r"has no agent\.toml"):
        await read_proposed_config(applied, 1)

    (proposed / "agent.toml").symlink_to("/etc/passwd")
    await git(proposed, "add", "agent.toml")
    link = await commit(proposed, None, "link")
    await fetch_proposal(proposed, applied, link, 2)
    with pytest.raises(RequestRefused, match="not a regular file"):
        await read_proposed_config(applied, 2)
    # Even once applied, the core does not follow the committed symlink.
    await approve_proposal(applied, 2)
    assert (applied / "agent.toml").is_symlink()
    with pytest.raises(InvalidAgentConfig, match="symlink"):
        await applied_config(applied)


async def test_config_planted_in_the_proposed_repo_never_runs(
    repos: tuple[Path, Path], tmp_path: Path
) -> None:
    proposed, applied = repos
    marker = tmp_path / "pwned"
    hook = f"sh -c 'touch {marker}; exec \"$@\"' --"
    await git(proposed, "config", "core.fsmonitor", f"touch {marker}; false")
    await git(proposed, "config", "uploadpack.packObjectsHook", hook)
    await git(proposed, "config", "core.hooksPath", str(tmp_path))
    (tmp_path / "post-checkout").write_text(f"#!/bin/sh\ntouch {marker}\n")
    (tmp_path / "post-checkout").chmod(0o755)
    head = await commit(proposed, SONNET)
    marker.unlink(missing_ok=True)  # the manager's own commit may have run them

    await fetch_proposal(proposed, applied, head, 1)
    await approve_proposal(applied, 1)
    await diff_proposal(applied, 1)
    await mark_deployed(applied, 1)
    assert not marker.exists()
    assert (await applied_config(applied)).model == "sonnet"


async def test_concurrent_operations_on_one_repo_serialise(
    repos: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    proposed, applied = repos
    shas = [await commit(proposed, SEED_AGENT_TOML + f"# {i}\n", f"c{i}") for i in range(6)]
    running = 0
    most = 0
    real_run_git = config_repo._run_git

    async def counting_run_git(repo: Path, *args: str, **kwargs: Any) -> Any:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            return await real_run_git(repo, *args, **kwargs)
        finally:
            running -= 1

    monkeypatch.setattr(config_repo, "_run_git", counting_run_git)
    results: dict[int, str] = {}

    async def propose(i: int) -> None:
        results[i + 1] = await fetch_proposal(proposed, applied, shas[i], i + 1)
        await read_proposed_config(applied, i + 1)
        await diff_proposal(applied, i + 1)

    async with trio.open_nursery() as nursery:
        for i in range(len(shas)):
            nursery.start_soon(propose, i)
    assert most == 1  # never two git commands on the repo at once
    assert results == {i + 1: sha for i, sha in enumerate(shas)}
    for i, sha in enumerate(shas):
        assert await tag_sha(applied, f"proposal/{i + 1}") == sha
    assert await git(applied, "for-each-ref", "refs/proposed/") == ""


async def test_different_repos_do_not_wait_for_each_other(tmp_path: Path) -> None:
    first = (tmp_path / "p1", tmp_path / "a1")
    second = (tmp_path / "p2", tmp_path / "a2")
    async with config_repo._locked(first[1]):
        with trio.fail_after(30):
            await ensure_repos(*second)  # would hang if locks were shared
    assert await applied_main(second[1])


async def test_git_failures_are_readable(tmp_path: Path) -> None:
    missing = tmp_path / "nothing"
    with pytest.raises(RequestRefused, match="there is no applied config repo"):
        await fetch_proposal(missing, missing, "abcdef1", 1)
    assert await applied_config(missing) == AgentConfig()  # no file: the defaults


def test_git_env_ignores_the_users_config() -> None:
    env = config_repo.git_env({"GIT_DIR": "/x", "GIT_AUTHOR_NAME": "eve", "HOME": "/h"})
    assert "GIT_DIR" not in env
    assert env["GIT_AUTHOR_NAME"] == "hyperhive"
    assert env["GIT_CONFIG_GLOBAL"] == os.devnull
    assert env["GIT_CONFIG_NOSYSTEM"] == "1"
    assert env["HOME"] == "/h"


def test_tag_message() -> None:
    assert config_repo.tag_message(None, "denied") == "denied\n"
    assert config_repo.tag_message("  \n", "denied") == "denied\n"
    assert config_repo.tag_message("a\x00b", "x") == "ab\n"
    long = config_repo.tag_message("e" * 100_000, "x")
    assert long.endswith("[… truncated]\n")
    assert len(long) < 70_000


async def test_a_proposal_recorded_from_its_text_is_deployed_like_a_fetched_one(
    repos: tuple[Path, Path],
) -> None:
    """The agent's node of a hive on several nodes gets the proposal's agent.toml from the
    database (hyperhive.hive): a commit on top of main, then the usual steps."""
    _, applied = repos
    (applied / "notes.md").write_text("kept\n")
    await git(applied, "add", "notes.md")
    main = await commit(applied, None, "a file besides agent.toml")
    sha = "ab" * 20
    made = await config_repo.record_proposal(applied, 7, SONNET, sha)
    assert await config_repo.has_proposal(applied, 7)
    assert not await config_repo.has_proposal(applied, 8)
    assert await tag_sha(applied, "proposal/7") == made
    assert await git(applied, "rev-parse", f"{made}^") == main
    assert await git(applied, "log", "-1", "--format=%B", made) == (
        f"apply_commit approval 7: proposal {sha}"
    )
    assert await git(applied, "show", f"{made}:notes.md") == "kept"
    # Again: the tag is kept as it is (whatever text is given).
    assert await config_repo.record_proposal(applied, 7, OPUS, sha) == made
    assert await applied_main(applied) == main  # main moves only once approved
    assert await read_proposed_config(applied, 7) == SONNET
    await approve_proposal(applied, 7)
    await mark_deployed(applied, 7)
    assert (applied / "agent.toml").read_text() == SONNET
    assert await recorded_outcome(applied, 7) == ("deployed", "")
    with pytest.raises(RequestRefused, match="not a full sha"):
        await config_repo.record_proposal(applied, 8, SONNET, "abc")
    with pytest.raises(RequestRefused, match="larger than"):
        await config_repo.record_proposal(applied, 8, "#" * 70_000, sha)
