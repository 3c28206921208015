"""The container contract: what an agent's payload finds inside its container, in one place.

Every agent sees its socket dir at :data:`SOCKET_DIR`, its state dir at :data:`STATE_DIR`
(also its working directory) and its claude credentials at :data:`CLAUDE_DIR`. The manager
also sees every agent's proposed config repo at ``/agents/<name>/config``
(:func:`proposed_repo`): the host's ``<state>/proposed`` tree, bound read-write as
:data:`AGENTS_DIR`, so the repo of an agent spawned later appears without a restart. Nothing
else of another agent (credentials, state, logs) is in that tree.

Without a container (the ``process`` backend) the same places are host paths, handed over in
the environment: :func:`agent_env` names the socket, state dir and files of every agent, and
:data:`AGENTS_DIR_ENV` the proposed tree for the manager. The harness
(``hyperhive_harness.config``) reads its environment through these names only.
"""

from __future__ import annotations

import json
from typing import Final

# ---- file names, the same on the host and in the container (config.Paths uses them too)
#: The agent socket, and the agent's web UI socket beside it (only the daemon reaches that dir).
SOCKET_NAME: Final = "mcp.sock"
UI_SOCKET_NAME: Final = "ui.sock"
#: In the agent's state dir: the harness's event log, its model choice, the running claude.
EVENTS_DB_NAME: Final = "hyperhive-events.sqlite"
MODEL_FILE_NAME: Final = "hyperhive-model"
CLAUDE_PID_FILE_NAME: Final = "hyperhive-claude.pid"
#: Where a claude login lives inside the claude dir.
CREDENTIALS_FILE_NAME: Final = ".credentials.json"

# ---- the in-container paths
SOCKET_DIR: Final = "/run/hive"
SOCKET: Final = f"{SOCKET_DIR}/{SOCKET_NAME}"
UI_SOCKET: Final = f"{SOCKET_DIR}/{UI_SOCKET_NAME}"
STATE_DIR: Final = "/state"
EVENTS_DB: Final = f"{STATE_DIR}/{EVENTS_DB_NAME}"
MODEL_FILE: Final = f"{STATE_DIR}/{MODEL_FILE_NAME}"
HOME: Final = "/root"
CLAUDE_DIR: Final = f"{HOME}/.claude"
CREDENTIALS_FILE: Final = f"{CLAUDE_DIR}/{CREDENTIALS_FILE_NAME}"
#: The manager's view of the host's ``<state>/proposed`` tree.
AGENTS_DIR: Final = "/agents"
#: The repo's directory name under ``<agents dir>/<name>/``.
PROPOSED_REPO_NAME: Final = "config"

# ---- the environment: what the backends set (every agent) ...
#: The agent socket (:data:`SOCKET` in a container).
SOCKET_ENV: Final = "HYPERHIVE_SOCKET"
#: The agent's state dir, also its working directory (:data:`STATE_DIR`).
STATE_DIR_ENV: Final = "HYPERHIVE_STATE_DIR"
#: The harness's event log and model file (:data:`EVENTS_DB`, :data:`MODEL_FILE`).
EVENTS_DB_ENV: Final = "HYPERHIVE_EVENTS_DB"
MODEL_FILE_ENV: Final = "HYPERHIVE_MODEL_FILE"
#: The agent's name.
AGENT_ENV: Final = "HYPERHIVE_AGENT"
#: The claude login the harness watches (only set when it is not ``$HOME/.claude``).
CREDENTIALS_FILE_ENV: Final = "HYPERHIVE_CREDENTIALS_FILE"
#: Built-in claude tools allowed besides the hyperhive ones (comma list; containers only).
EXTRA_ALLOWED_TOOLS_ENV: Final = "HYPERHIVE_EXTRA_ALLOWED_TOOLS"
#: The agent's extra MCP servers, JSON, from its applied agent.toml.
EXTRA_MCP_ENV: Final = "HYPERHIVE_EXTRA_MCP"
#: The compaction watermark, percent of the model's context window (agent.toml
#: ``[session] compact_at_percent``; 0: no proactive compaction).
COMPACT_AT_PERCENT_ENV: Final = "HYPERHIVE_COMPACT_AT_PERCENT"
#: A claude ``--settings`` JSON (the manager's: its working directories).
CLAUDE_SETTINGS_ENV: Final = "HYPERHIVE_CLAUDE_SETTINGS"
#: Where the manager's payload finds the proposed tree (``/agents`` in a container).
AGENTS_DIR_ENV: Final = "HYPERHIVE_AGENTS_DIR"
# ---- ... what they pass through from the daemon's environment ...
#: The claude CLI to run (default: ``claude`` on PATH).
CLAUDE_ENV: Final = "HYPERHIVE_CLAUDE"
RATE_LIMIT_SLEEP_ENV: Final = "HYPERHIVE_RATE_LIMIT_SLEEP"
RECONNECT_BACKOFF_ENV: Final = "HYPERHIVE_RECONNECT_BACKOFF"
# ---- ... and what only the harness reads (overrides for tests and by hand).
UI_SOCKET_ENV: Final = "HYPERHIVE_UI_SOCKET"
UI_HOST_ENV: Final = "HYPERHIVE_UI_HOST"
UI_ALLOWED_HOSTS_ENV: Final = "HYPERHIVE_UI_ALLOWED_HOSTS"
LOGIN_CMD_ENV: Final = "HYPERHIVE_LOGIN_CMD"
LOGIN_POLL_ENV: Final = "HYPERHIVE_LOGIN_POLL"
MAX_TURN_ATTEMPTS_ENV: Final = "HYPERHIVE_MAX_TURN_ATTEMPTS"
FAILED_RETRY_DELAY_ENV: Final = "HYPERHIVE_FAILED_RETRY_DELAY"
CANCEL_GRACE_ENV: Final = "HYPERHIVE_CANCEL_GRACE"
RECV_WAIT_ENV: Final = "HYPERHIVE_RECV_WAIT"
#: The identity of the manager's config commits.
MANAGER_GIT_NAME: Final = "manager"
MANAGER_GIT_EMAIL: Final = "manager@hyperhive.invalid"


def proposed_repo(name: str, agents_dir: str = AGENTS_DIR) -> str:
    """``/agents/<name>/config``: an agent's proposed config repo as the manager sees it."""
    return f"{agents_dir.rstrip('/')}/{name}/{PROPOSED_REPO_NAME}"


def agent_env(name: str, *, socket: str, state_dir: str) -> dict[str, str]:
    """What every agent's payload gets from its backend: who it is and where its files are
    (``socket`` and ``state_dir`` as the payload sees them)."""
    state = state_dir.rstrip("/")
    return {
        SOCKET_ENV: socket,
        STATE_DIR_ENV: state_dir,
        EVENTS_DB_ENV: f"{state}/{EVENTS_DB_NAME}",
        MODEL_FILE_ENV: f"{state}/{MODEL_FILE_NAME}",
        AGENT_ENV: name,
    }


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
        CLAUDE_SETTINGS_ENV: json.dumps(settings, separators=(",", ":")),
    }
