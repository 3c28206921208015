"""The container contract: what an agent's payload finds inside its container, in one place.

Every agent sees its socket dir at :data:`SOCKET_DIR`, its state dir at :data:`STATE_DIR`
(also its working directory) and its claude credentials at :data:`CLAUDE_DIR`. The manager
also sees every agent's proposed config repo at ``/agents/<name>/config``
(:func:`proposed_repo`): the host's ``<state>/proposed`` tree, bound read-write as
:data:`AGENTS_DIR`, so the repo of an agent spawned later appears without a restart. Nothing
else of another agent (credentials, state, logs) is in that tree.

Without a container (the ``process`` backend) the same places are host paths, handed over in
the environment: :data:`AGENTS_DIR_ENV` names the proposed tree for the manager.
"""

from __future__ import annotations

import json
from typing import Final

SOCKET_DIR: Final = "/run/hive"
SOCKET: Final = f"{SOCKET_DIR}/mcp.sock"
STATE_DIR: Final = "/state"
HOME: Final = "/root"
CLAUDE_DIR: Final = f"{HOME}/.claude"
#: The manager's view of the host's ``<state>/proposed`` tree.
AGENTS_DIR: Final = "/agents"
#: The repo's directory name under ``<agents dir>/<name>/``.
PROPOSED_REPO_NAME: Final = "config"
#: Where the manager's payload finds the proposed tree (``/agents`` in a container).
AGENTS_DIR_ENV: Final = "HYPERHIVE_AGENTS_DIR"
#: The identity of the manager's config commits.
MANAGER_GIT_NAME: Final = "manager"
MANAGER_GIT_EMAIL: Final = "manager@hyperhive.invalid"


def proposed_repo(name: str, agents_dir: str = AGENTS_DIR) -> str:
    """``/agents/<name>/config``: an agent's proposed config repo as the manager sees it."""
    return f"{agents_dir.rstrip('/')}/{name}/{PROPOSED_REPO_NAME}"


def manager_env(agents_dir: str) -> dict[str, str]:
    """What the manager's payload gets on top of every agent's environment.

    Where the proposed repos are; a git identity and ``safe.directory=*`` so that ``git
    commit`` works there out of the box (the container has no gitconfig, and the repos may
    be owned by another uid); and claude settings that add the tree to claude's working
    directories, so its file tools and shell treat it as part of the workspace.
    """
    settings = {"permissions": {"additionalDirectories": [agents_dir]}}
    return {
        AGENTS_DIR_ENV: agents_dir,
        "GIT_AUTHOR_NAME": MANAGER_GIT_NAME,
        "GIT_AUTHOR_EMAIL": MANAGER_GIT_EMAIL,
        "GIT_COMMITTER_NAME": MANAGER_GIT_NAME,
        "GIT_COMMITTER_EMAIL": MANAGER_GIT_EMAIL,
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "safe.directory",
        "GIT_CONFIG_VALUE_0": "*",
        "HYPERHIVE_CLAUDE_SETTINGS": json.dumps(settings, separators=(",", ":")),
    }
