"""Agent names: the one place that decides whether a string may name an agent.

Every path under the state and run directories that contains an agent name is built
only after the name passed through :func:`parse_agent_name`.
"""

from __future__ import annotations

import re
from typing import Final

#: 1 to 9 characters, so the container machine name ``h-<name>`` stays within 11.
AGENT_NAME_RE: Final = re.compile(r"[a-z][a-z0-9-]{0,8}")
MANAGER: Final = "manager"
OPERATOR: Final = "operator"
SYSTEM: Final = "system"
BROADCAST: Final = "*"
#: The sender of a reminder in its agent's own inbox.
REMINDER: Final = "reminder"
#: The sender of scheduled prompts.
SCHEDULER: Final = "scheduler"
RESERVED_NAMES: Final = frozenset({OPERATOR, SYSTEM, MANAGER, REMINDER, SCHEDULER})


class InvalidAgentName(ValueError):
    """A string that cannot name an agent; the message says why."""


def parse_agent_name(raw: object, *, allow_manager: bool = False) -> str:
    """Return ``raw`` if it is a valid agent name, else raise :class:`InvalidAgentName`.

    ``allow_manager`` admits the built-in ``manager``; the other reserved names never pass.
    """
    if not isinstance(raw, str):
        raise InvalidAgentName(f"agent name must be a string, not {type(raw).__name__}")
    if AGENT_NAME_RE.fullmatch(raw) is None:
        shown = raw if len(raw) <= 40 else raw[:40] + "…"
        raise InvalidAgentName(
            f"invalid agent name {shown!r}: use 1-9 characters, a lowercase letter first, "
            "then lowercase letters, digits or '-'"
        )
    if raw in RESERVED_NAMES and not (allow_manager and raw == MANAGER):
        raise InvalidAgentName(f"agent name {raw!r} is reserved")
    return raw


#: A node's name (``--node``): a host-name label, 1 to 32 characters.
NODE_NAME_RE: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")


class InvalidNodeName(ValueError):
    """A string that cannot name a node; the message says why."""


def parse_node_name(raw: object) -> str:
    """Return ``raw`` if it is a valid node name, else raise :class:`InvalidNodeName`."""
    if not isinstance(raw, str):
        raise InvalidNodeName(f"node name must be a string, not {type(raw).__name__}")
    if NODE_NAME_RE.fullmatch(raw) is None:
        shown = raw if len(raw) <= 40 else raw[:40] + "…"
        raise InvalidNodeName(
            f"invalid node name {shown!r}: use 1-32 lowercase letters, digits or '-', "
            "not starting or ending with '-'"
        )
    return raw


def node_name_from_host(host: str) -> str:
    """The default node name: the host name's first label, made a valid node name."""
    label = re.sub(r"[^a-z0-9-]+", "-", host.split(".", 1)[0].lower()).strip("-")[:32]
    label = label.strip("-")
    return label if NODE_NAME_RE.fullmatch(label) else "node"


def machine_name(name: str) -> str:
    """The container machine name of an agent (``hm1nd`` for the manager)."""
    return "hm1nd" if name == MANAGER else f"h-{name}"
