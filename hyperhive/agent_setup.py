"""Per-agent setup around the container: the config repos and the applied settings.

The proposed repos live in their own tree, ``<state>/proposed/<name>/config``, which the
manager's container gets as ``/agents`` (read-write). The manager can therefore change
anything in that tree, including replacing a directory with a symlink to somewhere else on
the host: :func:`proposed_repo` refuses such a path before the daemon touches it.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Final

import trio

from hyperhive.agent_config import AgentConfig
from hyperhive.config import Paths
from hyperhive.config_repo import applied_config, ensure_repos
from hyperhive.contract import PROPOSED_REPO_NAME
from hyperhive.errors import RequestRefused
from hyperhive.names import InvalidAgentName, parse_agent_name

log = logging.getLogger(__name__)


async def load_applied_config(applied_dir: Path) -> AgentConfig:
    """The applied ``agent.toml`` (defaults when absent); InvalidAgentConfig when broken."""
    return await applied_config(applied_dir)


def _real_dir_or_absent(path: Path) -> bool:
    """True for a real directory or nothing; False for a symlink or any other file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return True
    return stat.S_ISDIR(mode)


#: Files by which a git dir borrows from another place on the host; refused in a proposed
#: repo (the daemon fetches from it as root, outside the manager's container).
GIT_REDIRECTS: Final = ("commondir", "objects/info/alternates", "objects/info/http-alternates")


def check_proposed(paths: Paths, name: str) -> Path:
    """The proposed repo of ``name`` (blocking), refused when the manager replaced
    ``<state>/proposed/<name>``, its ``config``, ``.git`` or ``.git/objects`` by a symlink
    or a file (a ``.git`` file is a pointer to another git dir), or added a file that makes
    git read another repo (:data:`GIT_REDIRECTS`)."""
    repo = paths.proposed_dir(name)
    git_dir = repo / ".git"
    for path in (paths.proposed_root, repo.parent, repo, git_dir, git_dir / "objects"):
        if not _real_dir_or_absent(path):
            raise RequestRefused(
                f"{path} is not a plain directory (a symlink?); the daemon does not follow it: "
                f"remove it and a fresh config repo is made at the next start of {name}"
            )
    for rel in GIT_REDIRECTS:
        if os.path.lexists(git_dir / rel):
            raise RequestRefused(
                f"{git_dir / rel} points git at another repository; remove it first"
            )
    _refuse_symlinks(git_dir)
    return repo


#: Most entries of a proposed repo's git dir the symlink check walks (a config repo has
#: a few hundred).
MAX_PROPOSED_GIT_ENTRIES: Final = 100_000


def _refuse_symlinks(git_dir: Path) -> None:
    """Refuse a symlink anywhere in the git dir: git never makes one there, and git run by
    the daemon would read its target (any host file) as root — a ref, ``packed-refs`` or
    pack pointing at ``/etc/shadow``."""
    stack, seen = [git_dir], 0
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            seen += 1
            if seen > MAX_PROPOSED_GIT_ENTRIES:
                raise RequestRefused(
                    f"{git_dir} holds more than {MAX_PROPOSED_GIT_ENTRIES} files; "
                    "run git gc there first"
                )
            if entry.is_symlink():
                raise RequestRefused(
                    f"{entry.path} is a symlink; the daemon does not follow it: remove it"
                )
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))


async def proposed_repo(paths: Paths, name: str) -> Path:
    """:func:`check_proposed` in a thread."""
    return await trio.to_thread.run_sync(check_proposed, paths, name)


async def prepare_agent_repos(paths: Paths, name: str, seed: str) -> None:
    """Create the proposed and applied config repos of an agent when missing."""
    proposed = await proposed_repo(paths, name)
    await ensure_repos(proposed, paths.applied_dir(name), seed)


# ---------------------------------------------------------------- migration


def migrate_proposed_repos(paths: Paths) -> list[str]:
    """Move the proposed repos from the old place, ``<state>/agents/<name>/config``, to
    ``<state>/proposed/<name>/config`` (blocking); the names moved.

    Each move is one ``rename`` on the same file system, so a crash leaves every repo either
    at its old or at its new place, and running it again finishes the job. An empty
    leftover ``config`` directory (made by older versions before the repo) is removed; a
    repo at both places is left alone and logged.
    """
    old_root = paths.state_dir / "agents"
    if not old_root.is_dir():
        return []
    moved = []
    for entry in sorted(old_root.iterdir()):
        try:
            name = parse_agent_name(entry.name, allow_manager=True)
        except InvalidAgentName:
            continue
        old = entry / PROPOSED_REPO_NAME
        if old.is_symlink() or not old.is_dir():
            continue
        new = paths.proposed_dir(name)
        new.parent.mkdir(parents=True, exist_ok=True)
        if not new.exists() or (new.is_dir() and not new.is_symlink() and _empty(new)):
            os.replace(old, new)  # an empty directory at ``new`` is replaced atomically
            moved.append(name)
        elif _empty(old):
            old.rmdir()
        else:
            log.warning("%s and %s both hold a config repo; %s is left alone", old, new, old)
    return moved


def _empty(path: Path) -> bool:
    return not any(path.iterdir())
